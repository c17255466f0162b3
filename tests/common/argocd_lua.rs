//! Runs the Argo CD health checks (`argocd/health/<Kind>.lua`) on an object
//! as Argo CD would: Debian's `lua5.4` (required: `apt-get install lua5.4`)
//! inside a sandbox shaped like Argo CD's VM (only the base and table
//! libraries, no string methods), and also `lua5.1` when it is installed,
//! since Argo CD's gopher-lua implements Lua 5.1. Shared by the tests of the
//! scripts on reconciler output (`tests/argocd_health.rs`) and on live
//! objects read back from the API server (`tests/kubernetes_e2e`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// `argocd/health/<Kind>.lua`.
pub fn script(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("argocd/health")
        .join(format!("{kind}.lua"))
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `lua5.4` always (the test fails without it), `lua5.1` too when present.
fn interpreters() -> Vec<&'static str> {
    assert!(
        on_path("lua5.4"),
        "lua5.4 is not on PATH: the Argo CD health checks cannot be executed. \
         Install it with `apt-get install lua5.4` (Debian package lua5.4)."
    );
    let mut found = vec!["lua5.4"];
    if on_path("lua5.1") {
        found.push("lua5.1");
    }
    found
}

/// A Lua expression for a JSON value (null fields are left out, as Argo CD
/// decodes them to nil).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for byte in s.bytes() {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(byte as char),
            // Decimal escapes work in Lua 5.1 and 5.4 alike, also for the
            // bytes of UTF-8 sequences.
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

/// What a health script returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub status: String,
    pub message: String,
}

/// Runs the kind's health script on `object` with every interpreter and
/// checks they agree.
pub fn health(object: &Value) -> Health {
    let kind = object["kind"].as_str().expect("object has a kind");
    let path = script(kind);
    assert!(path.exists(), "{} is missing", path.display());
    let program = format!(
        r#"local chunk = assert(loadfile({path}))
obj = {object}
local print, tostring, type, pcall = print, tostring, type, pcall
-- Argo CD's VM: base, table, package and a safe os only.
string = nil
io = nil
math = nil
coroutine = nil
utf8 = nil
debug.setmetatable("", nil)
debug = nil
local ok, hs = pcall(chunk)
if not ok then
  print("ERROR")
  print(tostring(hs))
elseif type(hs) ~= "table" then
  print("ERROR")
  print("the script returned " .. type(hs) .. ", not a table")
else
  print(tostring(hs.status))
  print(tostring(hs.message))
end
"#,
        path = lua_string(&path.to_string_lossy()),
        object = lua_literal(object),
    );
    let mut results = Vec::new();
    for interpreter in interpreters() {
        let mut child = Command::new(interpreter)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {interpreter}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(program.as_bytes())
            .expect("write the program");
        let output = child.wait_with_output().expect("lua finished");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{interpreter} failed on {kind}: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (status, message) = stdout.split_once('\n').unwrap_or((&stdout, ""));
        let health = Health {
            status: status.to_string(),
            message: message.trim_end_matches('\n').to_string(),
        };
        assert_ne!(
            health.status, "ERROR",
            "{interpreter}: {kind} health script raised {}\nobject: {object:#}",
            health.message
        );
        assert!(
            ["Healthy", "Progressing", "Degraded", "Suspended"].contains(&health.status.as_str()),
            "{interpreter}: {kind} returned status {:?}",
            health.status
        );
        results.push((interpreter, health));
    }
    let (first, expected) = results[0].clone();
    for (interpreter, other) in &results[1..] {
        assert_eq!(
            &expected, other,
            "{first} and {interpreter} disagree on {object:#}"
        );
    }
    expected
}
