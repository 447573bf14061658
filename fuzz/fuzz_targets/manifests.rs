//! Manifest parsing and substitution: any bytes a repository holds must end in objects or an
//! error, within the limits, never in a panic, a hang or unbounded memory.
#![no_main]

use capstan::render::{Limits, Variables, parse_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the file type and whether variables are substituted.
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 { "a.yaml" } else { "a.json" };
    let variables: Variables = [("name".to_string(), "value".to_string())].into();
    let variables = (mode & 2 != 0).then_some(&variables);
    let limits = Limits {
        max_file_bytes: 64 * 1024,
        ..Limits::default()
    };
    if let Ok(manifests) = parse_file(file, bytes, &limits, variables) {
        for manifest in manifests {
            assert!(manifest.object["metadata"]["name"].is_string());
        }
    }
});
