//! `archiver-operator validate`: the admission rules of the CRDs (OpenAPI
//! schema and CEL, evaluated offline by kube's CEL engine on the exact rules
//! in the generated CRDs) plus the semantic rules no schema can express.
//!
//! The manifests source uses the same functions, so an object the validate
//! command rejects is never reconciled.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::common::{GROUP, UtcWindow, VERSION};
use super::{crd_for_kind, schema_check};

/// One problem found in a manifest, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File the object came from.
    pub file: PathBuf,
    /// 1-based line, when the problem is in the YAML itself.
    pub line: Option<usize>,
    /// `Kind/namespace/name`, when the problem belongs to an object.
    pub object: Option<String>,
    /// Field path such as `spec.tiers.public.dailyDays`.
    pub field: Option<String>,
    pub reason: String,
}

impl Problem {
    /// A problem of the file as a whole (it cannot be read, or is not a
    /// manifest file at all).
    fn of_file(file: &Path, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            object: None,
            field: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// One YAML document of a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub file: PathBuf,
    /// 0-based position of the document in its file.
    pub index: usize,
    pub value: Value,
}

impl Document {
    pub(crate) fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    pub(crate) fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    /// Namespace, `default` when the manifest leaves it out (as kubectl does).
    pub(crate) fn namespace(&self) -> &str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
    }
    /// `Kind/namespace/name`, or `Kind/<document N>` when unnamed.
    pub(crate) fn label(&self) -> String {
        let kind = if self.kind().is_empty() {
            "<no kind>"
        } else {
            self.kind()
        };
        if self.name().is_empty() {
            format!("{kind}/<document {}>", self.index + 1)
        } else {
            format!("{kind}/{}/{}", self.namespace(), self.name())
        }
    }
    /// Whether this is one of the operator's kinds.
    pub(crate) fn is_archiver_kind(&self) -> bool {
        self.api_version() == format!("{GROUP}/{VERSION}") && super::KINDS.contains(&self.kind())
    }
    /// Whether this is a core Secret (which resolves `secretRef`s).
    pub(crate) fn is_secret(&self) -> bool {
        self.api_version() == "v1" && self.kind() == "Secret"
    }

    fn problem(&self, field: Option<String>, reason: impl Into<String>) -> Problem {
        Problem {
            file: self.file.clone(),
            line: None,
            object: Some(self.label()),
            field,
            reason: reason.into(),
        }
    }
}

/// Refuses, before parsing, text whose flow collections the parser would take
/// too long over (see [`MAX_FLOW_COLLECTIONS`]). The depth is counted on
/// every bracket, quoted or not, so it can only over-count: a quoted `]`
/// may hide a level from it, which is why the total is bounded as well.
fn flow_nesting_problem(text: &str) -> Option<String> {
    let (mut depth, mut deepest, mut opened) = (0usize, 0usize, 0usize);
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => {
                opened += 1;
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_YAML_DEPTH {
        Some(format!(
            "nested deeper than {MAX_YAML_DEPTH} levels (flow collections '[' or '{{' counted before parsing)"
        ))
    } else if opened > MAX_FLOW_COLLECTIONS {
        Some(format!(
            "{opened} flow collections ('[' or '{{'); at most {MAX_FLOW_COLLECTIONS} are read (write the manifest in block style)"
        ))
    } else {
        None
    }
}

/// Largest manifest file read; a bigger one is a manifest problem, never
/// minutes of parsing (DESIGN.md section 9).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Deepest nesting of maps and lists accepted in a manifest: the custom
/// resources are about ten levels deep; this leaves room and stops a crafted
/// file long before the parser's own recursion limit.
pub const MAX_YAML_DEPTH: usize = 64;
/// Most flow collections (`[` or `{`) a manifest file may open. The YAML
/// parser's cost grows with the square of flow nesting, and it reads a whole
/// document before [`MAX_YAML_DEPTH`] can apply: 20,000 nested `[` take
/// seconds, 100,000 minutes. Counting every bracket, quoted or not, bounds
/// that cost whatever the quoting; block-style manifests have none, and a
/// JSON manifest of one of our objects has a few dozen.
pub const MAX_FLOW_COLLECTIONS: usize = 20_000;

/// What one document may expand to (aliases included): 16 units per node
/// plus the bytes of its strings. A 4 MiB file without aliases stays far
/// below it; an alias bomb reaches it after bounded work.
pub const MAX_EXPANDED_UNITS: usize = 64 * 1024 * 1024;
const UNITS_PER_NODE: usize = 16;

/// Splits `text` into its YAML documents. Unparseable YAML is one problem with
/// its line number; empty documents are skipped.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Document>, Problem> {
    match parse_documents_partially(file, text) {
        (documents, None) => Ok(documents),
        (_, Some(problem)) => Err(problem),
    }
}

/// Like [`parse_documents`], but keeps the documents before the first one
/// that cannot be parsed (the YAML stream cannot be resumed after it), so
/// `validate` still reports their problems.
pub fn parse_documents_partially(file: &Path, text: &str) -> (Vec<Document>, Option<Problem>) {
    if let Some(reason) = flow_nesting_problem(text) {
        let problem = Problem::of_file(file, reason);
        return (Vec::new(), Some(problem));
    }
    let mut documents = Vec::new();
    for (index, deserializer) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let budget = std::cell::Cell::new(MAX_EXPANDED_UNITS);
        let seed = BoundedValue {
            budget: &budget,
            depth: 0,
        };
        match serde::de::DeserializeSeed::deserialize(seed, deserializer) {
            Ok(Value::Null) => {}
            Ok(value) => documents.push(Document {
                file: file.to_path_buf(),
                index,
                value,
            }),
            Err(error) => {
                let problem = Problem {
                    file: file.to_path_buf(),
                    line: error.location().map(|l| l.line()),
                    object: None,
                    field: None,
                    reason: format!("invalid YAML: {error}"),
                };
                return (documents, Some(problem));
            }
        }
    }
    (documents, None)
}

/// Deserializes a YAML document into JSON while counting what it expands
/// to, so that neither deep nesting nor aliases (a "billion laughs" file)
/// can cost more than a bounded amount of time and memory.
struct BoundedValue<'a> {
    budget: &'a std::cell::Cell<usize>,
    depth: usize,
}

impl BoundedValue<'_> {
    fn charge<E: serde::de::Error>(&self, units: usize) -> Result<(), E> {
        match self.budget.get().checked_sub(units) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(E::custom(format!(
                "document too large once its aliases are expanded (more than {} MiB)",
                MAX_EXPANDED_UNITS / (1024 * 1024)
            ))),
        }
    }

    fn nested<E: serde::de::Error>(&self) -> Result<Self, E> {
        if self.depth >= MAX_YAML_DEPTH {
            return Err(E::custom(format!(
                "nested deeper than {MAX_YAML_DEPTH} levels"
            )));
        }
        Ok(BoundedValue {
            budget: self.budget,
            depth: self.depth + 1,
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for BoundedValue<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BoundedValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(UNITS_PER_NODE)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(UNITS_PER_NODE)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(UNITS_PER_NODE)?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(UNITS_PER_NODE)?;
        // JSON has no NaN or infinity; serde_json's own Value does the same.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(UNITS_PER_NODE.saturating_add(v.len()))?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(UNITS_PER_NODE.saturating_add(v.len()))?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.charge(UNITS_PER_NODE)?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(UNITS_PER_NODE)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.nested()?)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(UNITS_PER_NODE)?;
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.charge(key.len())?;
            let value = map.next_value_seed(self.nested()?)?;
            // The API server and kubectl refuse a key given twice; taking
            // the last one silently would run something nobody reviewed.
            if fields.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {key:?} in one mapping"
                )));
            }
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// The text of a manifest file, or the problem that stops it being read:
/// too large, or not UTF-8 (with the byte offset and line of the first
/// invalid byte).
pub fn manifest_text(file: &Path, bytes: Vec<u8>) -> Result<String, Problem> {
    let problem = |line: Option<usize>, reason: String| Problem {
        file: file.to_path_buf(),
        line,
        object: None,
        field: None,
        reason,
    };
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(problem(None, too_large_reason()));
    }
    String::from_utf8(bytes).map_err(|error| {
        let offset = error.utf8_error().valid_up_to();
        let bytes = error.as_bytes();
        let line = 1 + bytes[..offset].iter().filter(|b| **b == b'\n').count();
        problem(
            Some(line),
            format!(
                "not UTF-8: invalid byte 0x{:02x} at byte offset {offset}",
                bytes[offset]
            ),
        )
    })
}

fn too_large_reason() -> String {
    format!(
        "larger than {} MiB: not read",
        MAX_MANIFEST_BYTES / (1024 * 1024)
    )
}

/// Reads at most [`MAX_MANIFEST_BYTES`] (plus one byte, to tell a file that
/// is too large) from an open file.
fn read_bounded(file: &Path, opened: std::fs::File) -> Result<String, Problem> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    opened
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Problem::of_file(file, format!("cannot read: {error}")))?;
    manifest_text(file, bytes)
}

/// Reads and parses one file.
pub fn read_documents(file: &Path) -> Result<Vec<Document>, Problem> {
    let opened = std::fs::File::open(file)
        .map_err(|error| Problem::of_file(file, format!("cannot read: {error}")))?;
    parse_documents(file, &read_bounded(file, opened)?)
}

/// What reading one manifest file gave: its documents (those before a YAML
/// error included) and the problems of the file itself.
#[derive(Debug, Clone, Default)]
pub struct FileReading {
    pub documents: Vec<Document>,
    pub problems: Vec<Problem>,
}

/// Reads one manifest file for `validate` and the manifests source. `file`
/// names it in messages; `resolved` is where it is read from (the target
/// of a link, already checked to stay inside its directory).
pub fn read_manifest(file: &Path, resolved: &Path) -> FileReading {
    let mut reading = FileReading::default();
    let text = open_regular_file(resolved)
        .map_err(|error| Problem::of_file(file, format!("cannot read: {error}")))
        .and_then(|opened| read_bounded(file, opened));
    match text {
        Ok(text) => {
            let (documents, problem) = parse_documents_partially(file, &text);
            reading.documents = documents;
            reading.problems.extend(problem);
        }
        Err(problem) => reading.problems.push(problem),
    }
    reading
}

/// Opens a regular file without following a link in its last component
/// and without blocking on a FIFO.
fn open_regular_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let opened = options.open(path)?;
    if !opened.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(opened)
}

/// Every problem of one object on its own: metadata, schema, CEL and
/// semantic rules, all of them in one run (a schema error does not hide the
/// other problems of the object).
pub fn validate_document(doc: &Document) -> Vec<Problem> {
    if doc.is_secret() {
        return validate_secret(doc);
    }
    if !doc.is_archiver_kind() {
        return vec![doc.problem(
            None,
            format!(
                "unknown kind {:?} with apiVersion {:?}: expected {GROUP}/{VERSION} \
                 ArchiverShard, RetentionPolicy, PartitionSchedule, DeletionRequest, or a v1 Secret",
                doc.kind(),
                doc.api_version()
            ),
        )];
    }
    let mut problems = validate_metadata(doc);
    let Some(schema) = schema_for_kind(doc.kind()) else {
        return problems;
    };
    // The CRD schema describes spec (and status, which is ignored on create:
    // the API server takes it from the status subresource only); apiVersion,
    // kind and metadata are checked by the API server itself.
    let mut object = doc.value.clone();
    if let Some(map) = object.as_object_mut() {
        for implicit in ["apiVersion", "kind", "metadata", "status"] {
            map.remove(implicit);
        }
    }
    let violations = schema_check::check(schema, &object);
    // A CEL rule runs only where its node is structurally sound (as at
    // admission, where a type error stops the rules); the rules of every
    // other node still run, so their problems are reported too.
    let blocked: Vec<&str> = violations
        .iter()
        .filter(|v| v.blocks_rules)
        .map(|v| v.field.as_str())
        .collect();
    problems.extend(
        violations
            .iter()
            .map(|v| doc.problem(Some(v.field.clone()), v.reason.clone())),
    );
    for (field, message) in cel_problems(schema, &object, &blocked) {
        problems.push(doc.problem((!field.is_empty()).then_some(field), message));
    }
    // The semantic rules parse what CEL can only match; a field already
    // reported is not reported twice.
    for problem in semantic_problems(doc) {
        let reported = problems
            .iter()
            .any(|p| p.field.is_some() && p.field == problem.field);
        if !reported {
            problems.push(problem);
        }
    }
    problems
}

/// The OpenAPI schema of each kind, generated once per process (building
/// the CRDs costs far more than checking an object against them).
fn schema_for_kind(kind: &str) -> Option<&'static Value> {
    static SCHEMAS: std::sync::OnceLock<BTreeMap<String, Value>> = std::sync::OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            super::KINDS
                .iter()
                .filter_map(|kind| {
                    let crd = crd_for_kind(kind)?;
                    let schema = crd.spec.versions[0]
                        .schema
                        .as_ref()
                        .and_then(|s| s.open_api_v3_schema.as_ref())
                        .map(|s| serde_json::to_value(s).expect("a JSON schema serializes"))?;
                    Some((kind.to_string(), schema))
                })
                .collect()
        })
        .get(kind)
}

/// The CEL rules of every node whose subtree has no blocking schema
/// violation, each node's rules on their own: `(field path, message)`.
fn cel_problems(schema: &Value, object: &Value, blocked: &[&str]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    cel_walk(schema, object, "", blocked, &mut found, 0);
    found
}

fn cel_walk(
    schema: &Value,
    value: &Value,
    path: &str,
    blocked: &[&str],
    found: &mut Vec<(String, String)>,
    depth: usize,
) {
    if depth > MAX_YAML_DEPTH {
        return;
    }
    let sound = !blocked.iter().any(|b| {
        path.is_empty()
            || *b == path
            || b.strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    });
    let has_rules = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .is_some_and(|rules| !rules.is_empty());
    if has_rules && sound {
        // This node's rules only: the rules below it run at their own node.
        let mut own = schema.clone();
        strip_nested_rules(&mut own, true);
        if let Err(errors) = kube::core::cel::Validator::new().validate(&own, value, None) {
            for error in errors.into_vec() {
                let relative = error.field_path.trim_start_matches('.');
                let field = match (path.is_empty(), relative.is_empty()) {
                    (true, _) => relative.to_string(),
                    (false, true) => path.to_string(),
                    (false, false) if relative.starts_with('[') => format!("{path}{relative}"),
                    (false, false) => format!("{path}.{relative}"),
                };
                found.push((field, error.message));
            }
        }
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(fields) = value.as_object() {
        for (key, child) in fields {
            let child_schema = properties
                .and_then(|p| p.get(key))
                .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
            if let Some(child_schema) = child_schema {
                cel_walk(child_schema, child, &join(key), blocked, found, depth + 1);
            }
        }
    }
    if let (Some(items_schema), Some(items)) = (schema.get("items"), value.as_array()) {
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            cel_walk(items_schema, item, &item_path, blocked, found, depth + 1);
        }
    }
}

fn strip_nested_rules(schema: &mut Value, top: bool) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    if !top {
        map.remove("x-kubernetes-validations");
    }
    if let Some(properties) = map.get_mut("properties").and_then(Value::as_object_mut) {
        for child in properties.values_mut() {
            strip_nested_rules(child, false);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get_mut(key) {
            strip_nested_rules(child, false);
        }
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        if let Some(branches) = map.get_mut(key).and_then(Value::as_array_mut) {
            for branch in branches {
                strip_nested_rules(branch, false);
            }
        }
    }
}

/// `metadata.name` and `metadata.namespace` as the API server checks them:
/// the manifests source builds file names from them, so nothing else may
/// pass (a namespace such as `x/../../outside` would name a path).
fn validate_metadata(doc: &Document) -> Vec<Problem> {
    let mut problems = Vec::new();
    let name = doc.value.pointer("/metadata/name");
    if !name
        .and_then(Value::as_str)
        .is_some_and(super::common::is_dns1123_subdomain)
    {
        problems.push(doc.problem(
            Some("metadata.name".into()),
            "must be a lowercase DNS subdomain (RFC 1123): labels of a-z, 0-9 and '-' \
             joined by single dots, at most 253 characters",
        ));
    }
    if let Some(namespace) = doc.value.pointer("/metadata/namespace")
        && !namespace
            .as_str()
            .is_some_and(super::common::is_dns1123_label)
    {
        problems.push(doc.problem(
            Some("metadata.namespace".into()),
            "must be a lowercase DNS label (RFC 1123): a-z, 0-9 and '-', at most 63 characters",
        ));
    }
    problems
}

fn validate_secret(doc: &Document) -> Vec<Problem> {
    let mut problems = validate_metadata(doc);
    if let Some(data) = doc.value.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            let decodes = value.as_str().is_some_and(|v| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(v).is_ok()
            });
            if !decodes {
                problems.push(doc.problem(Some(format!("data.{key}")), "must be base64"));
            }
        }
    }
    problems
}

/// Rules that need parsing or arithmetic beyond what the CRD can say.
fn semantic_problems(doc: &Document) -> Vec<Problem> {
    let spec = doc.value.get("spec").cloned().unwrap_or(Value::Null);
    let mut problems = Vec::new();
    let mut window = |field: &str| {
        if let Some(text) = spec
            .pointer(&format!("/{}", field.replace('.', "/")))
            .and_then(Value::as_str)
            && let Err(error) = UtcWindow::parse(text)
        {
            problems.push(doc.problem(Some(format!("spec.{field}")), error.to_string()));
        }
    };
    match doc.kind() {
        "RetentionPolicy" => window("enforcement.window"),
        "PartitionSchedule" => window("dropWindow"),
        "ArchiverShard" => problems.extend(shard_problems(doc, &spec)),
        _ => {}
    }
    problems
}

fn shard_problems(doc: &Document, spec: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(text) = spec.get("backfillWhenNoWatermark").and_then(Value::as_str) {
        match parse_duration(text) {
            Some(d) if d.num_seconds() > 0 => {}
            _ => problems.push(doc.problem(
                Some("spec.backfillWhenNoWatermark".into()),
                format!("must be a positive duration such as 1h or 90m, got {text:?}"),
            )),
        }
    }
    let gaps = spec.get("acknowledgedGaps").and_then(Value::as_array);
    for (i, gap) in gaps.into_iter().flatten().enumerate() {
        let at = |key: &str| {
            gap.get(key)
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        if let (Some(from), Some(to)) = (at("from"), at("to"))
            && from >= to
        {
            problems.push(doc.problem(
                Some(format!("spec.acknowledgedGaps[{i}].to")),
                "must be after from",
            ));
        }
    }
    problems
}

pub use crate::clock::parse_duration;

/// Rules across objects: duplicates, two RetentionPolicies, two shards on
/// one watermark row.
pub fn cross_object_problems(docs: &[&Document]) -> Vec<Problem> {
    let mut problems = duplicate_problems(docs);
    problems.extend(policy_conflict_problems(docs));
    problems
}

/// Objects that must not run at all: the same object twice, or two shards
/// on one watermark row.
pub fn duplicate_problems(docs: &[&Document]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, &Document> = BTreeMap::new();
    for doc in docs {
        let key = doc.label();
        if let Some(first) = seen.get(&key) {
            problems.push(doc.problem(
                None,
                format!("defined twice (also in {})", first.file.display()),
            ));
        } else {
            seen.insert(key, doc);
        }
    }
    let mut shards: BTreeMap<i64, &Document> = BTreeMap::new();
    for doc in docs.iter().filter(|d| d.kind() == "ArchiverShard") {
        let Some(id) = doc.value.pointer("/spec/shardId").and_then(Value::as_i64) else {
            continue;
        };
        if let Some(first) = shards.get(&id) {
            problems.push(doc.problem(
                Some("spec.shardId".into()),
                format!("shard {id} is already drained by {}", first.label()),
            ));
        } else {
            shards.insert(id, doc);
        }
    }
    problems
}

/// More than one RetentionPolicy: reported, and at run time the policies
/// report `Conflict` and nothing is deleted.
pub fn policy_conflict_problems(docs: &[&Document]) -> Vec<Problem> {
    let policies: Vec<&&Document> = docs
        .iter()
        .filter(|d| d.kind() == "RetentionPolicy")
        .collect();
    if policies.len() <= 1 {
        return Vec::new();
    }
    let names: Vec<String> = policies.iter().map(|d| d.label()).collect();
    policies
        .iter()
        .map(|doc| {
            doc.problem(
                None,
                format!(
                    "exactly one RetentionPolicy may be in force, found {} ({}); nothing would be deleted",
                    policies.len(),
                    names.join(", ")
                ),
            )
        })
        .collect()
}

/// A manifest file to read: the path as found (named in messages) and the
/// file it resolves to (a link's target, checked to stay inside the
/// directory it was found in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub path: PathBuf,
    pub resolved: PathBuf,
}

/// The files of some manifest paths, and the entries that were refused.
#[derive(Debug, Clone, Default)]
pub struct ManifestListing {
    pub files: Vec<ManifestEntry>,
    pub problems: Vec<Problem>,
}

/// Expands directories into the YAML files directly in them (sorted; hidden
/// files and sub-directories are skipped). A link found in a directory is
/// followed only when its target, all links resolved, stays inside that
/// directory; one that leaves it is a problem and is not read. Files named
/// explicitly are read as given.
pub fn list_manifests(paths: &[PathBuf]) -> ManifestListing {
    let mut listing = ManifestListing::default();
    for path in paths {
        if path.is_dir() {
            list_directory(path, &mut listing);
        } else {
            let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            listing.files.push(ManifestEntry {
                path: path.clone(),
                resolved,
            });
        }
    }
    listing
}

/// The paths of [`list_manifests`], for callers that read the shipped
/// examples; refused entries are left out.
pub fn manifest_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    list_manifests(paths)
        .files
        .into_iter()
        .map(|entry| entry.path)
        .collect()
}

fn list_directory(dir: &Path, listing: &mut ManifestListing) {
    // Not recursive, like `kubectl apply -f DIR` and an Argo CD directory
    // source: sub-directories (examples/argocd/, .archiver/) are other things.
    let refuse = |path: PathBuf, reason: String| Problem::of_file(&path, reason);
    let (Ok(root), Ok(entries)) = (std::fs::canonicalize(dir), std::fs::read_dir(dir)) else {
        listing.problems.push(refuse(
            dir.to_path_buf(),
            "cannot list the directory".into(),
        ));
        return;
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_file() {
            // Directly in the directory and not a link: nothing to resolve
            // (and no system call spent on it: this runs every second).
            found.push(Ok(ManifestEntry {
                resolved: root.join(entry.file_name()),
                path,
            }));
            continue;
        }
        if !file_type.is_symlink() {
            continue;
        }
        let resolved = match std::fs::canonicalize(&path) {
            Ok(resolved) => resolved,
            Err(error) => {
                found.push(Err(refuse(
                    path,
                    format!("is a link that cannot be resolved ({error}): not read"),
                )));
                continue;
            }
        };
        if !resolved.starts_with(&root) {
            found.push(Err(refuse(
                path,
                format!(
                    "is a link that leaves the manifests directory {}: not read",
                    dir.display()
                ),
            )));
            continue;
        }
        // Directories and special files named *.yaml are not manifests
        // (and a FIFO would block the reader).
        if std::fs::metadata(&resolved).is_ok_and(|m| m.is_file()) {
            found.push(Ok(ManifestEntry { path, resolved }));
        }
    }
    found.sort_by(|a, b| {
        let path = |r: &Result<ManifestEntry, Problem>| match r {
            Ok(entry) => entry.path.clone(),
            Err(problem) => problem.file.clone(),
        };
        path(a).cmp(&path(b))
    });
    for item in found {
        match item {
            Ok(entry) => listing.files.push(entry),
            Err(problem) => listing.problems.push(problem),
        }
    }
}

/// Every problem of a set of documents: each document on its own, then the
/// cross-object rules over the valid ones.
pub fn document_problems(documents: &[Document]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut valid = Vec::new();
    for doc in documents {
        let found = validate_document(doc);
        if found.is_empty() {
            valid.push(doc);
        }
        problems.extend(found);
    }
    problems.extend(cross_object_problems(&valid));
    problems
}

/// Validates files as the `validate` command does: every problem of every
/// document, then the cross-object rules over the valid ones.
pub fn validate_files(files: &[PathBuf]) -> Vec<Problem> {
    let listing = ManifestListing {
        files: files
            .iter()
            .map(|file| ManifestEntry {
                path: file.clone(),
                resolved: std::fs::canonicalize(file).unwrap_or_else(|_| file.clone()),
            })
            .collect(),
        problems: Vec::new(),
    };
    validate_listing(&listing)
}

/// The `validate` command: every problem of every file and object under
/// `paths`, and how many files were read.
pub fn validate_paths(paths: &[PathBuf]) -> (usize, Vec<Problem>) {
    let listing = list_manifests(paths);
    (listing.files.len(), validate_listing(&listing))
}

fn validate_listing(listing: &ManifestListing) -> Vec<Problem> {
    let mut problems = listing.problems.clone();
    let mut documents = Vec::new();
    for entry in &listing.files {
        let reading = read_manifest(&entry.path, &entry.resolved);
        problems.extend(reading.problems);
        documents.extend(reading.documents);
    }
    problems.extend(document_problems(&documents));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("1h"), Some(chrono::Duration::hours(1)));
        assert_eq!(parse_duration("1h30m"), Some(chrono::Duration::minutes(90)));
        assert_eq!(parse_duration("45s"), Some(chrono::Duration::seconds(45)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1d"), None);
    }

    #[test]
    fn unparseable_yaml_reports_its_line() {
        let problem = parse_documents(Path::new("x.yaml"), "a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(problem.line.is_some_and(|l| l >= 2), "{problem}");
        assert!(problem.to_string().starts_with("x.yaml:"), "{problem}");
    }

    #[test]
    fn multi_document_files_split_and_skip_empty_documents() {
        let docs = parse_documents(
            Path::new("x.yaml"),
            "---\n# only a comment\n---\nkind: A\n---\nkind: B\n",
        )
        .unwrap();
        let kinds: Vec<&str> = docs.iter().map(Document::kind).collect();
        assert_eq!(kinds, vec!["A", "B"]);
    }
}
