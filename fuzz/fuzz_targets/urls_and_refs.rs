//! Repository URLs, push payload URLs and substitution text: parsed or refused, never a panic.
#![no_main]

use capstan::render::{Variables, substitute};
use capstan::source::RemoteUrl;
use capstan::webhook::normalize_url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = RemoteUrl::parse(text) {
        // What logs and status show of it must be computable for any accepted URL.
        let _ = url.redacted();
    }
    let _ = normalize_url(text);
    let variables: Variables = [("a".to_string(), "1".to_string())].into();
    let _ = substitute(text, &variables);
});
