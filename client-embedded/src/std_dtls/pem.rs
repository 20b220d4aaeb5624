//! The blocks of a PEM file (certificates, keys), each decoded to DER.

use x509_cert::der::pem;

/// Every `-----BEGIN ...-----` block of `text`, in order, as its label and
/// DER; an error names the block that does not decode.
pub(crate) fn blocks(text: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = find(rest, BEGIN) {
        let block = &rest[start..];
        // The block ends after its END line's closing dashes.
        let end = find(block, b"-----END ")
            .and_then(|e| find(&block[e + 9..], b"-----").map(|d| e + 9 + d + 5))
            .ok_or_else(|| format!("block {}: no END line", out.len() + 1))?;
        let (label, der) =
            pem::decode_vec(&block[..end]).map_err(|e| format!("block {}: {e}", out.len() + 1))?;
        out.push((label.to_owned(), der));
        rest = &block[end..];
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn blocks_are_found_between_other_text() {
        let text = b"junk\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\nmore\n-----BEGIN X-----\nAAEC\n-----END X-----\n";
        let blocks = blocks(text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].0, "EC PARAMETERS");
        assert_eq!(blocks[1], ("X".to_owned(), vec![0, 1, 2]));
    }

    #[test]
    fn a_block_without_its_end_is_an_error() {
        assert!(blocks(b"-----BEGIN X-----\nAAEC\n").is_err());
        assert_eq!(blocks(b"no pem here").unwrap(), vec![]);
    }
}
