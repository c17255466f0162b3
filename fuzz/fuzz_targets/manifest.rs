//! Arbitrary bytes as a manifest file, read as `validate` and the manifests
//! source read one (`manifest_text`: the 4 MiB limit and the UTF-8 check;
//! `parse_documents_partially`: YAML with its depth and alias budgets), then
//! every document validated on its own and the cross-object rules over the
//! valid ones (`document_problems`). Nothing may panic; libFuzzer's
//! `-timeout` bounds the time of one input.
#![no_main]

use std::path::Path;

use archiver_operator::api::validation::{
    self, MAX_MANIFEST_BYTES, manifest_text, parse_documents, parse_documents_partially,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = Path::new("fuzz.yaml");
    let text = match manifest_text(file, data.to_vec()) {
        Ok(text) => text,
        Err(problem) => {
            // Refused only for a reason: too large or not UTF-8.
            assert!(
                data.len() as u64 > MAX_MANIFEST_BYTES || std::str::from_utf8(data).is_err(),
                "{problem:?}"
            );
            return;
        }
    };
    let (documents, problem) = parse_documents_partially(file, &text);
    // The whole-file parse agrees with the partial one: it fails exactly
    // when the partial one reports a problem, and otherwise gives the same
    // documents.
    match parse_documents(file, &text) {
        Ok(all) => {
            assert!(problem.is_none(), "{problem:?}");
            assert_eq!(all.len(), documents.len());
        }
        Err(_) => assert!(problem.is_some()),
    }
    for problem in validation::document_problems(&documents) {
        assert!(!problem.reason.is_empty());
    }
});
