//! The committed CRDs under `crds/` are exactly what the code generates.

use std::path::Path;

use archiver_operator::api::{crd_file_name, crd_yaml, crds};

#[test]
fn committed_crds_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files: Vec<String> = Vec::new();
    for crd in crds() {
        let file = crd_file_name(&crd);
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| {
            panic!("crds/{file} missing ({e}); run `archiver-operator crd --output-dir crds`")
        });
        assert!(
            committed == crd_yaml(&crd),
            "crds/{file} drifted from the code; run `archiver-operator crd --output-dir crds`"
        );
        expected_files.push(file);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "crds/ holds files the code does not generate"
    );
}

#[test]
fn crd_command_prints_the_committed_files() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .arg("crd")
        .output()
        .expect("run the binary");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("UTF-8");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let committed: String = crds()
        .iter()
        .map(|crd| std::fs::read_to_string(dir.join(crd_file_name(crd))).expect("committed CRD"))
        .collect();
    assert_eq!(printed, committed);
}
