//! `archiver-operator validate`: the admission rules of the CRDs (OpenAPI
//! schema and CEL, evaluated offline by kube's CEL engine on the exact rules
//! in the generated CRDs) plus the semantic rules no schema can express.
//!
//! The manifests source uses the same functions, so an object the validate
//! command rejects is never reconciled.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
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
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    pub fn api_version(&self) -> &str {
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
    pub fn namespace(&self) -> &str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
    }
    /// `Kind/namespace/name`, or `Kind/<document N>` when unnamed.
    pub fn label(&self) -> String {
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
    pub fn is_archiver_kind(&self) -> bool {
        self.api_version() == format!("{GROUP}/{VERSION}") && super::KINDS.contains(&self.kind())
    }
    /// Whether this is a core Secret (which resolves `secretRef`s).
    pub fn is_secret(&self) -> bool {
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

/// Splits `text` into its YAML documents. Unparseable YAML is one problem with
/// its line number; empty documents are skipped.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Document>, Problem> {
    let mut documents = Vec::new();
    for (index, deserializer) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(deserializer).map_err(|error| Problem {
            file: file.to_path_buf(),
            line: error.location().map(|l| l.line()),
            object: None,
            field: None,
            reason: format!("invalid YAML: {error}"),
        })?;
        if !value.is_null() {
            documents.push(Document {
                file: file.to_path_buf(),
                index,
                value,
            });
        }
    }
    Ok(documents)
}

/// Reads and parses one file.
pub fn read_documents(file: &Path) -> Result<Vec<Document>, Problem> {
    let text = std::fs::read_to_string(file).map_err(|error| Problem {
        file: file.to_path_buf(),
        line: None,
        object: None,
        field: None,
        reason: format!("cannot read: {error}"),
    })?;
    parse_documents(file, &text)
}

/// Every problem of one object on its own: schema, CEL and semantic rules.
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
    let Some(crd) = crd_for_kind(doc.kind()) else {
        return problems;
    };
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).expect("a JSON schema serializes"))
        .unwrap_or(Value::Null);
    // The CRD schema describes spec (and status, which is ignored on create:
    // the API server takes it from the status subresource only); apiVersion,
    // kind and metadata are checked by the API server itself.
    let mut object = doc.value.clone();
    if let Some(map) = object.as_object_mut() {
        for implicit in ["apiVersion", "kind", "metadata", "status"] {
            map.remove(implicit);
        }
    }
    let schema_problems: Vec<Problem> = schema_check::check(&schema, &object)
        .into_iter()
        .map(|v| doc.problem(Some(v.field), v.reason))
        .collect();
    if !schema_problems.is_empty() {
        // CEL rules assume a structurally valid object (as at admission).
        problems.extend(schema_problems);
        return problems;
    }
    if let Err(errors) = kube::core::cel::Validator::new().validate(&schema, &object, None) {
        problems.extend(errors.into_vec().into_iter().map(|e| {
            let field = e.field_path.trim_start_matches('.').to_string();
            doc.problem((!field.is_empty()).then_some(field), e.message)
        }));
    }
    if problems.is_empty() {
        problems.extend(semantic_problems(doc));
    }
    problems
}

fn validate_metadata(doc: &Document) -> Vec<Problem> {
    let name = doc.name();
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid_name {
        Vec::new()
    } else {
        vec![doc.problem(
            Some("metadata.name".into()),
            "must be a lowercase DNS subdomain (a-z, 0-9, '-', '.')",
        )]
    }
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

/// Parses a Go-style duration (`1h`, `90m`, `1h30m`, `45s`).
pub fn parse_duration(text: &str) -> Option<chrono::Duration> {
    let mut total = chrono::Duration::zero();
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total += match c {
            'h' => chrono::Duration::try_hours(n)?,
            'm' => chrono::Duration::try_minutes(n)?,
            's' => chrono::Duration::try_seconds(n)?,
            _ => return None,
        };
    }
    (digits.is_empty() && !text.is_empty()).then_some(total)
}

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

/// Expands directories into the YAML files directly in them (sorted; hidden
/// files and sub-directories are skipped).
pub fn manifest_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            collect_yaml(path, &mut found);
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    files
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    // Not recursive, like `kubectl apply -f DIR` and an Argo CD directory
    // source: sub-directories (examples/argocd/, .archiver/) are other things.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml")
        {
            out.push(path);
        }
    }
}

/// Validates files as the `validate` command does: every problem of every
/// document, then the cross-object rules over the valid ones.
pub fn validate_files(files: &[PathBuf]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut documents = Vec::new();
    for file in files {
        match read_documents(file) {
            Ok(docs) => documents.extend(docs),
            Err(problem) => problems.push(problem),
        }
    }
    let mut valid = Vec::new();
    for doc in &documents {
        let found = validate_document(doc);
        if found.is_empty() {
            valid.push(doc);
        }
        problems.extend(found);
    }
    problems.extend(cross_object_problems(&valid));
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
