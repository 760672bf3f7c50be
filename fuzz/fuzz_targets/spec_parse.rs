//! Fuzzes the spec parser: arbitrary bytes through `SourceFile::from_bytes` and `load`, which must
//! never panic and must report a diagnostic whenever they refuse a spec.
#![no_main]

use endstate_spec::{HostInfo, SourceFile, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = match SourceFile::from_bytes("fuzz.yaml", data) {
        Ok(file) => file,
        Err(diagnostic) => {
            assert!(diagnostic.is_error());
            return;
        }
    };
    let hosts = [HostInfo {
        name: "h1".to_owned(),
        labels: [("role".to_owned(), "web".to_owned())].into(),
    }];
    let loaded = load(&[file], &hosts);
    assert_eq!(loaded.desired.is_some(), !loaded.has_errors());
    for diagnostic in &loaded.diagnostics {
        assert!(
            !diagnostic.to_string().contains('\n'),
            "multi-line diagnostic: {diagnostic}"
        );
    }
});
