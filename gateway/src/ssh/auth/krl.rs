//! OpenSSH key revocation lists (KRLs), the binary format `ssh-keygen -k`
//! writes and sshd's `RevokedKeys` reads (PROTOCOL.krl), read into a
//! [`RevocationList`]. No maintained crate reads them: this follows the
//! format's description, and the tests check it against KRLs made by the
//! real `ssh-keygen -k`.
//!
//! Read: certificate sections (serial lists, ranges and bitmaps, key ids,
//! under one CA or any), explicit keys, SHA-1 and SHA-256 fingerprints.
//! Extensions that are not critical (the Bloom filters) are skipped; a
//! critical one, a signature section (OpenSSH 9.4 and later refuse them
//! too) or any malformed field makes the whole list invalid, so a list is
//! never half read.

use super::revocation::{CertRule, RevocationList, Serials};

/// `"SSHKRL\n\0"`.
pub const MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;
const SECTION_EXTENSION: u8 = 255;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;
const CERT_EXTENSION: u8 = 0x39;

/// Why a KRL could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid OpenSSH KRL: {0}")]
pub struct KrlError(String);

fn bad(why: impl Into<String>) -> KrlError {
    KrlError(why.into())
}

/// SSH wire-format fields, read front to back.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], KrlError> {
        if self.rest.len() < n {
            return Err(bad(format!("truncated {what}")));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, KrlError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, KrlError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, KrlError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<&'a [u8], KrlError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
}

/// Read a whole KRL.
pub fn parse(bytes: &[u8]) -> Result<RevocationList, KrlError> {
    let mut f = Fields::new(bytes);
    if f.take(MAGIC.len(), "magic")? != MAGIC {
        return Err(bad("no SSHKRL magic"));
    }
    let version = f.u32("format version")?;
    if version != FORMAT_VERSION {
        return Err(bad(format!("format version {version} (only 1 is known)")));
    }
    f.u64("krl version")?;
    f.u64("generated date")?;
    f.u64("flags")?;
    f.string("reserved")?;
    f.string("comment")?;
    let mut list = RevocationList::default();
    while !f.is_empty() {
        let kind = f.u8("section type")?;
        if kind == SECTION_SIGNATURE {
            return Err(bad("signed KRLs are not supported (as in OpenSSH 9.4+)"));
        }
        let data = f.string("section")?;
        let mut s = Fields::new(data);
        match kind {
            SECTION_CERTIFICATES => list.certs.push(cert_section(&mut s)?),
            SECTION_EXPLICIT_KEY => {
                while !s.is_empty() {
                    list.keys.insert(s.string("explicit key")?.to_vec());
                }
            }
            SECTION_FINGERPRINT_SHA1 | SECTION_FINGERPRINT_SHA256 => {
                let (set, len) = if kind == SECTION_FINGERPRINT_SHA1 {
                    (&mut list.sha1, 20)
                } else {
                    (&mut list.sha256, 32)
                };
                while !s.is_empty() {
                    let hash = s.string("key hash")?;
                    if hash.len() != len {
                        return Err(bad(format!("a {}-byte key hash", hash.len())));
                    }
                    set.insert(hash.to_vec());
                }
            }
            SECTION_EXTENSION => extension(&mut s, "section")?,
            other => return Err(bad(format!("unknown section type {other}"))),
        }
    }
    Ok(list)
}

/// An extension: skipped unless critical.
fn extension(s: &mut Fields<'_>, whose: &str) -> Result<(), KrlError> {
    let name = s.string("extension name")?;
    let critical = s.u8("extension flag")? != 0;
    s.string("extension contents")?;
    if critical {
        return Err(bad(format!(
            "critical {whose} extension {:?} is not supported",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

fn cert_section(s: &mut Fields<'_>) -> Result<CertRule, KrlError> {
    let ca = s.string("CA key")?;
    s.string("reserved")?;
    let mut rule = CertRule {
        ca: (!ca.is_empty()).then(|| ca.to_vec()),
        ..CertRule::default()
    };
    while !s.is_empty() {
        let kind = s.u8("certificate section type")?;
        let mut d = Fields::new(s.string("certificate section")?);
        match kind {
            CERT_SERIAL_LIST => {
                while !d.is_empty() {
                    let n = d.u64("serial")?;
                    rule.serials.push(Serials::Range(n, n));
                }
            }
            CERT_SERIAL_RANGE => {
                let (lo, hi) = (d.u64("serial range")?, d.u64("serial range")?);
                if lo > hi {
                    return Err(bad(format!("serial range {lo}-{hi} is backwards")));
                }
                rule.serials.push(Serials::Range(lo, hi));
            }
            CERT_SERIAL_BITMAP => {
                let offset = d.u64("bitmap offset")?;
                let bits = d.string("bitmap")?;
                if bits.first().is_some_and(|b| b & 0x80 != 0) {
                    return Err(bad("negative serial bitmap"));
                }
                rule.serials.push(Serials::Bitmap {
                    offset,
                    bits: bits.to_vec(),
                });
            }
            CERT_KEY_ID => {
                while !d.is_empty() {
                    let id = d.string("key id")?;
                    let id = std::str::from_utf8(id).map_err(|_| bad("a key id is not UTF-8"))?;
                    rule.ids.insert(id.to_string());
                }
            }
            CERT_EXTENSION => extension(&mut d, "certificate")?,
            other => return Err(bad(format!("unknown certificate section type {other:#x}"))),
        }
        if kind != CERT_EXTENSION && kind != CERT_KEY_ID && !d.is_empty() {
            return Err(bad("trailing bytes in a certificate section"));
        }
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn header() -> Vec<u8> {
        let mut k = MAGIC.to_vec();
        k.extend_from_slice(&1u32.to_be_bytes());
        k.extend_from_slice(&[0; 24]);
        string(&mut k, b"");
        string(&mut k, b"a comment");
        k
    }

    fn section(k: &mut Vec<u8>, kind: u8, data: &[u8]) {
        k.push(kind);
        string(k, data);
    }

    #[test]
    fn empty_list_and_bad_headers() {
        let list = parse(&header()).unwrap();
        assert!(!list.key_revoked(b"k"));
        assert!(parse(b"SSHKRL\n").is_err());
        let mut v2 = header();
        v2[11] = 2;
        assert!(parse(&v2).unwrap_err().0.contains("format version 2"));
        let mut wrong = header();
        wrong[0] = b'X';
        assert!(parse(&wrong).is_err());
    }

    #[test]
    fn sections_hand_made() {
        let mut k = header();
        let mut keys = Vec::new();
        string(&mut keys, b"blob-1");
        section(&mut k, SECTION_EXPLICIT_KEY, &keys);
        let mut certs = Vec::new();
        string(&mut certs, b"");
        string(&mut certs, b"");
        let mut bitmap = Vec::new();
        bitmap.extend_from_slice(&1000u64.to_be_bytes());
        string(&mut bitmap, &[0x01, 0x00, 0x05]);
        certs.push(CERT_SERIAL_BITMAP);
        string(&mut certs, &bitmap);
        section(&mut k, SECTION_CERTIFICATES, &certs);
        let mut ext = Vec::new();
        string(&mut ext, b"bloom-explicit-key");
        ext.push(0);
        string(&mut ext, b"whatever");
        section(&mut k, SECTION_EXTENSION, &ext);
        let list = parse(&k).unwrap();
        assert!(list.key_revoked(b"blob-1") && !list.key_revoked(b"blob-2"));
        // Bits 0, 2 and 16 of the bitmap, from its least significant end.
        for (serial, revoked) in [(1000, true), (1001, false), (1002, true), (1016, true)] {
            assert_eq!(
                list.cert_revoked(b"any-ca", serial, "x"),
                revoked,
                "{serial}"
            );
        }
        assert!(!list.cert_revoked(b"any-ca", 999, "x"));
        assert!(!list.cert_revoked(b"any-ca", 1000 + 24, "x"));

        // A critical extension, a signature, an unknown section: refused.
        let mut crit = header();
        let mut ext = Vec::new();
        string(&mut ext, b"x@example.com");
        ext.push(1);
        string(&mut ext, b"");
        section(&mut crit, SECTION_EXTENSION, &ext);
        assert!(parse(&crit).unwrap_err().0.contains("x@example.com"));
        let mut signed = header();
        section(&mut signed, SECTION_SIGNATURE, b"");
        assert!(parse(&signed).unwrap_err().0.contains("signed"));
        let mut unknown = header();
        section(&mut unknown, 9, b"");
        assert!(parse(&unknown).is_err());
        // Truncated inside a section: refused, never half read.
        let mut boundaries = vec![header().len()];
        let mut at = header().len();
        while at < k.len() {
            let len = u32::from_be_bytes(k[at + 1..at + 5].try_into().unwrap()) as usize;
            at += 5 + len;
            boundaries.push(at);
        }
        assert_eq!(boundaries.len(), 4);
        for cut in header().len()..k.len() {
            assert_eq!(
                parse(&k[..cut]).is_ok(),
                boundaries.contains(&cut),
                "cut at {cut}"
            );
        }
    }
}
