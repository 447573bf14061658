//! Digests that outlive the process: written into object labels and cache directory names, so
//! they must be the same for every build. std's `DefaultHasher` promises no such thing across
//! Rust releases; SHA-256 does.

use sha2::{Digest, Sha256};

/// The first 64 bits of the SHA-256 of `bytes`, as 16 hex digits.
pub fn stable_hex(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// The first 64 bits of the SHA-256 of `bytes`, as a number.
pub fn stable_u64(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_for_every_build() {
        // Computed with `printf %s '…' | sha256sum | cut -c1-16`.
        assert_eq!(
            super::stable_hex(b"https://git.example.com/acme/podinfo.git"),
            "57673e6a8bdd4d22"
        );
        assert_eq!(
            format!(
                "{:016x}",
                super::stable_u64(b"https://git.example.com/acme/podinfo.git")
            ),
            "57673e6a8bdd4d22"
        );
    }
}
