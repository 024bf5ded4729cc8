//! The user-data renderer: one `#cloud-config` document per node, for every provider.
//!
//! The document does two things, and nothing else: it writes the agent's configuration
//! ([`AgentConfig`], with the node's secrets) to [`AGENT_CONFIG_PATH`] as root with mode
//! 0600, and it enables and starts [`AGENT_UNIT`], whose binary and unit file are baked
//! into the VM image (`cloud-init/bake-image`). The local provider reads the
//! configuration back out of the same bytes with [`agent_config`], so a test VM boots
//! from exactly what a cloud VM receives.
//!
//! The YAML is written by hand, not by a YAML library, in a deliberately small subset:
//! every scalar is double-quoted, and the configuration is a literal block whose lines
//! are JSON escaped down to printable ASCII. Nothing a caller puts in a value (quotes,
//! newlines, `#`, `: `, Unicode line separators, control characters) can change the
//! document's structure. [`agent_config`] reads exactly that subset back.
//!
//! Sizes: EC2 takes at most [`EC2_LIMIT`] bytes and Azure [`AZURE_LIMIT`] bytes of
//! user-data before base64. [`render_for`] sends the plain document when it fits and a
//! gzip-compressed one (cloud-init recognises gzip by its magic bytes and inflates it)
//! when only that fits, and otherwise says how large both were.

use std::fmt::Write as _;
use std::io::{Read, Write};

use shoal_protocol::{AgentConfig, AGENT_CONFIG_PATH};

/// The systemd unit the document enables and starts (`cloud-init/shoal-agent.service`).
pub const AGENT_UNIT: &str = "shoal-agent.service";

/// The most bytes [`agent_config`] inflates gzip-compressed user-data to: far above any
/// real document (the largest a cloud accepts is Azure's, 65,535 bytes), and a bound against a
/// gzip bomb.
pub const MAX_INFLATED_BYTES: usize = 1 << 20;

/// The first line cloud-init requires of a cloud-config document.
const HEADER: &str = "#cloud-config";
/// The gzip magic bytes, by which cloud-init (and [`agent_config`]) detect compression.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why a user-data document could not be made or read. No variant carries a secret:
/// messages name fields, lines and sizes, never values.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// Too large for the provider even compressed.
    #[error("user-data is {size} bytes ({compressed} gzip-compressed), over the {provider} limit of {limit} bytes")]
    TooLarge {
        /// Provider name.
        provider: &'static str,
        /// Plain size.
        size: usize,
        /// Compressed size.
        compressed: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a document this renderer wrote.
    #[error("user-data is not a Shoal cloud-config: {0}")]
    Invalid(String),
    /// Compressing the document failed (writing into memory: not expected to happen).
    #[error("cannot gzip-compress the user-data: {0}")]
    Gzip(#[source] std::io::Error),
}

/// Renders the `#cloud-config` document for one node.
///
/// The document holds the node's secrets (cluster key, node token): it is for the
/// provider's API and for the VM, not for logs.
pub fn render(cfg: &AgentConfig) -> String {
    let json = config_json(cfg);
    let mut doc = String::with_capacity(json.len() + 512);
    doc.push_str(HEADER);
    doc.push('\n');
    doc.push_str("# Shoal: writes this node's agent configuration and starts the agent baked\n");
    doc.push_str("# into the image. It holds the node's secrets: do not log or share it.\n");
    doc.push_str("write_files:\n");
    let _ = writeln!(doc, "  - path: {}", yaml_quoted(AGENT_CONFIG_PATH));
    let _ = writeln!(doc, "    owner: {}", yaml_quoted("root:root"));
    let _ = writeln!(doc, "    permissions: {}", yaml_quoted("0600"));
    doc.push_str("    content: |\n");
    for line in json.lines() {
        doc.push_str("      ");
        doc.push_str(line);
        doc.push('\n');
    }
    // `--no-block`: runcmd runs inside cloud-final.service, and the agent's start must
    // not wait on it. On an image baked with the unit enabled this only (re)affirms
    // what the boot already did; on the first boot it covers a unit whose
    // ConditionPathExists was checked before the file above existed.
    doc.push_str("runcmd:\n");
    let argv = ["systemctl", "enable", "--now", "--no-block", AGENT_UNIT];
    let quoted: Vec<String> = argv.iter().map(|a| yaml_quoted(a)).collect();
    let _ = writeln!(doc, "  - [{}]", quoted.join(", "));
    doc
}

/// Renders and, when a limit is given and the plain document exceeds it, gzip-compresses
/// (cloud-init detects gzip); errors when even that is too large.
pub fn render_for(
    provider: &'static str,
    cfg: &AgentConfig,
    limit: Option<usize>,
) -> Result<Vec<u8>, UserDataError> {
    let plain = render(cfg).into_bytes();
    let Some(limit) = limit else {
        return Ok(plain);
    };
    if plain.len() <= limit {
        return Ok(plain);
    }
    let compressed = gzip(&plain)?;
    if compressed.len() <= limit {
        return Ok(compressed);
    }
    Err(UserDataError::TooLarge {
        provider,
        size: plain.len(),
        compressed: compressed.len(),
        limit,
    })
}

/// Reads the agent configuration back out of rendered (possibly gzipped) user-data:
/// how the local provider boots its VMs from the very document a cloud VM gets.
pub fn agent_config(user_data: &[u8]) -> Result<AgentConfig, UserDataError> {
    let inflated;
    let bytes = if user_data.starts_with(&GZIP_MAGIC) {
        inflated = gunzip(user_data)?;
        &inflated[..]
    } else {
        user_data
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| UserDataError::Invalid(format!("not UTF-8 (at byte {})", e.valid_up_to())))?;
    let first = text.lines().next().unwrap_or("");
    if first.trim_end() != HEADER {
        return Err(UserDataError::Invalid(format!(
            "it does not begin with `{HEADER}`"
        )));
    }
    let entries = write_files(text)?;
    let entry = entries
        .iter()
        .find(|e| e.get("path") == Some(AGENT_CONFIG_PATH))
        .ok_or_else(|| {
            UserDataError::Invalid(format!("no write_files entry for {AGENT_CONFIG_PATH}"))
        })?;
    if let Some(enc) = entry.get("encoding") {
        if !matches!(enc, "text/plain" | "") {
            return Err(UserDataError::Invalid(format!(
                "the write_files entry for {AGENT_CONFIG_PATH} has encoding {enc:?}, \
                 which this reader does not decode"
            )));
        }
    }
    let content = entry.get("content").ok_or_else(|| {
        UserDataError::Invalid(format!(
            "the write_files entry for {AGENT_CONFIG_PATH} has no content"
        ))
    })?;
    // serde_json's messages can quote the offending value, and the values here are
    // secrets: report only the kind of error and where it is.
    serde_json::from_str::<AgentConfig>(content).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "cannot be read",
            serde_json::error::Category::Syntax => "is not valid JSON",
            serde_json::error::Category::Data => {
                "is JSON but not an agent configuration (a field is missing, unknown or of the wrong type)"
            }
            serde_json::error::Category::Eof => "is truncated JSON",
        };
        UserDataError::Invalid(format!(
            "the content of {AGENT_CONFIG_PATH} {kind} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// The configuration as pretty JSON, every string escaped down to printable ASCII so
/// that it can sit in a YAML literal block unchanged (YAML refuses some characters JSON
/// allows raw, such as DEL and U+0085, and treats U+2028 as a line break).
///
/// Written by hand so that it cannot fail (no `expect` on serde_json); destructuring
/// the struct makes a new `AgentConfig` field a compile error here rather than a field
/// silently left out. The unit tests check it against serde's reading.
fn config_json(cfg: &AgentConfig) -> String {
    let AgentConfig {
        metadata_url,
        cluster_key,
        node_id,
        node_token,
        ca_cert_pem,
        deadline_secs,
    } = cfg;
    let mut fields: Vec<(&str, String)> = vec![
        ("metadata_url", json_string(metadata_url)),
        ("cluster_key", json_string(cluster_key)),
        ("node_id", json_string(node_id)),
        ("node_token", json_string(node_token)),
    ];
    if let Some(pem) = ca_cert_pem {
        fields.push(("ca_cert_pem", json_string(pem)));
    }
    fields.push(("deadline_secs", deadline_secs.to_string()));
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  {}: {v}", json_string(k)))
        .collect();
    format!("{{\n{}\n}}\n", body.join(",\n"))
}

/// A JSON string literal in printable ASCII: `\uXXXX` (UTF-16, surrogate pairs beyond
/// the BMP) for everything else.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
    out
}

/// A YAML double-quoted scalar in printable ASCII (valid in YAML 1.1 and 1.2).
fn yaml_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, UserDataError> {
    // GzEncoder writes a zero mtime and no file name: the same document always
    // compresses to the same bytes.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).map_err(UserDataError::Gzip)?;
    enc.finish().map_err(UserDataError::Gzip)
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, UserDataError> {
    let mut out = Vec::new();
    let limit = u64::try_from(MAX_INFLATED_BYTES).unwrap_or(u64::MAX);
    flate2::read::GzDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| UserDataError::Invalid(format!("corrupt gzip data: {e}")))?;
    if out.len() > MAX_INFLATED_BYTES {
        return Err(UserDataError::Invalid(format!(
            "gzip data inflates to more than {MAX_INFLATED_BYTES} bytes"
        )));
    }
    Ok(out)
}

/// One `write_files` entry: its keys and their (unquoted) values.
#[derive(Debug, Default)]
struct Entry {
    fields: Vec<(String, String)>,
}

impl Entry {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Reads the `write_files` list of a document in the subset [`render`] writes: a
/// top-level `write_files:` followed by `- key: value` entries whose values are
/// double-quoted, single-quoted or plain scalars, or literal (`|`) blocks.
fn write_files(text: &str) -> Result<Vec<Entry>, UserDataError> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == "write_files:")
        .ok_or_else(|| UserDataError::Invalid("it has no top-level `write_files:` list".into()))?;
    let mut entries: Vec<Entry> = Vec::new();
    // The column of the current entry's keys (after "- ").
    let mut key_col: Option<usize> = None;
    let mut i = start + 1;
    while i < lines.len() {
        let line = lines[i];
        let lineno = i + 1;
        let trimmed = line.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let indent = indent_of(line);
        if indent == 0 && !trimmed.starts_with("- ") {
            break; // the next top-level key
        }
        let (col, pair) = if let Some(rest) = trimmed.strip_prefix("- ") {
            entries.push(Entry::default());
            let col = indent + 2 + indent_of(rest);
            key_col = Some(col);
            (col, rest.trim_start_matches(' '))
        } else {
            (indent, trimmed)
        };
        let (Some(entry), Some(kc)) = (entries.last_mut(), key_col) else {
            return Err(UserDataError::Invalid(format!(
                "line {lineno}: expected a `- ` list entry under write_files"
            )));
        };
        if col != kc {
            return Err(UserDataError::Invalid(format!(
                "line {lineno}: unexpected indentation in write_files"
            )));
        }
        let (key, raw) = pair.split_once(':').ok_or_else(|| {
            UserDataError::Invalid(format!(
                "line {lineno}: expected `key: value` in write_files"
            ))
        })?;
        let key = key.trim().to_string();
        let raw = raw.trim();
        i += 1;
        let value = if let Some(chomp) = raw.strip_prefix('|') {
            let (value, next) = literal_block(&lines, i, kc, chomp, lineno)?;
            i = next;
            value
        } else {
            scalar(raw, lineno)?
        };
        entry.fields.push((key, value));
    }
    Ok(entries)
}

/// A literal block scalar starting at `lines[from]`, for a key at column `key_col`.
/// Returns the value and the index of the first line after the block.
fn literal_block(
    lines: &[&str],
    from: usize,
    key_col: usize,
    chomp: &str,
    lineno: usize,
) -> Result<(String, usize), UserDataError> {
    let keep = match chomp.trim() {
        "" => Chomp::Clip,
        "-" => Chomp::Strip,
        "+" => Chomp::Keep,
        _ => {
            return Err(UserDataError::Invalid(format!(
                "line {lineno}: unsupported block scalar header (only `|`, `|-`, `|+`)"
            )))
        }
    };
    let mut block_indent: Option<usize> = None;
    let mut body: Vec<&str> = Vec::new();
    let mut j = from;
    while j < lines.len() {
        let line = lines[j];
        if line.trim().is_empty() {
            body.push("");
            j += 1;
            continue;
        }
        let ind = indent_of(line);
        let bi = *block_indent.get_or_insert(ind);
        if ind <= key_col || ind < bi {
            break;
        }
        body.push(&line[bi..]);
        j += 1;
    }
    // Trailing empty lines belong to the block only for chomping purposes.
    let mut trailing_empty = 0;
    while body.last() == Some(&"") {
        body.pop();
        trailing_empty += 1;
    }
    let mut value = body.join("\n");
    match keep {
        Chomp::Strip => {}
        Chomp::Clip if !body.is_empty() => value.push('\n'),
        Chomp::Clip => {}
        Chomp::Keep => {
            value.push('\n');
            value.push_str(&"\n".repeat(trailing_empty));
        }
    }
    Ok((value, j))
}

#[derive(Debug, Clone, Copy)]
enum Chomp {
    Clip,
    Strip,
    Keep,
}

/// A one-line scalar: double-quoted (with YAML escapes), single-quoted, or plain.
fn scalar(raw: &str, lineno: usize) -> Result<String, UserDataError> {
    let bad = |what: &str| UserDataError::Invalid(format!("line {lineno}: {what}"));
    if let Some(body) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.chars();
        loop {
            match chars.next() {
                None => return Err(bad("unterminated double-quoted string")),
                Some('"') => break,
                Some('\\') => {
                    let c = chars.next().ok_or_else(|| bad("unterminated escape"))?;
                    let mut hex = |n: usize| -> Result<char, UserDataError> {
                        let digits: String = chars.by_ref().take(n).collect();
                        u32::from_str_radix(&digits, 16)
                            .ok()
                            .filter(|_| digits.len() == n)
                            .and_then(char::from_u32)
                            .ok_or_else(|| bad("invalid escape in double-quoted string"))
                    };
                    out.push(match c {
                        '0' => '\0',
                        'a' => '\x07',
                        'b' => '\x08',
                        't' | '\t' => '\t',
                        'n' => '\n',
                        'v' => '\x0b',
                        'f' => '\x0c',
                        'r' => '\r',
                        'e' => '\x1b',
                        ' ' => ' ',
                        '"' => '"',
                        '/' => '/',
                        '\\' => '\\',
                        'N' => '\u{85}',
                        '_' => '\u{a0}',
                        'L' => '\u{2028}',
                        'P' => '\u{2029}',
                        'x' => hex(2)?,
                        'u' => hex(4)?,
                        'U' => hex(8)?,
                        _ => return Err(bad("unknown escape in double-quoted string")),
                    });
                }
                Some(c) => out.push(c),
            }
        }
        let rest = chars.as_str().trim();
        if !(rest.is_empty() || rest.starts_with('#')) {
            return Err(bad("text after a double-quoted string"));
        }
        Ok(out)
    } else if let Some(body) = raw.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = body.chars().peekable();
        loop {
            match chars.next() {
                None => return Err(bad("unterminated single-quoted string")),
                Some('\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    out.push('\'');
                }
                Some('\'') => break,
                Some(c) => out.push(c),
            }
        }
        Ok(out)
    } else {
        // A plain scalar ends at a comment (` #`).
        let value = match raw.find(" #") {
            Some(at) => &raw[..at],
            None => raw,
        };
        Ok(value.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::aws::USER_DATA_LIMIT as EC2_LIMIT;
    use crate::providers::azure::USER_DATA_LIMIT as AZURE_LIMIT;
    use rand::RngCore;

    const KEY: &str = "3f9d2c7a1b4e8f6051a2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60789";
    const TOKEN: &str = "tok-SECRET-5b1c9e0d7f2a4e6b8c0d2f4a6b8c0e2f";

    fn pem(body_len: usize, random: bool) -> String {
        use base64::Engine as _;
        let mut raw = vec![0u8; body_len * 3 / 4];
        if random {
            rand::rng().fill_bytes(&mut raw);
        } else {
            for (i, b) in raw.iter_mut().enumerate() {
                *b = (i % 7) as u8;
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    fn config(ca: Option<String>) -> AgentConfig {
        AgentConfig {
            metadata_url: "https://10.213.0.1:8787".into(),
            cluster_key: KEY.into(),
            node_id: "node-0".into(),
            node_token: TOKEN.into(),
            ca_cert_pem: ca,
            deadline_secs: 900,
        }
    }

    fn awkward() -> AgentConfig {
        AgentConfig {
            metadata_url: "https://coord.example:8787/a path?x=\"1\"&y='2' # not a comment".into(),
            cluster_key: "key: with colon\\backslash\ttab\r\nnewline".into(),
            node_id: "- [not, a, list] {a: b} |".into(),
            node_token: "\u{0}\u{7}\u{1b}\u{7f}\u{85}\u{a0}\u{2028}\u{2029}\u{feff}é😀\"".into(),
            ca_cert_pem: Some(pem(900, true)),
            deadline_secs: u64::MAX,
        }
    }

    #[test]
    fn round_trip_plain() {
        for cfg in [config(None), config(Some(pem(800, true))), awkward()] {
            let doc = render(&cfg);
            let back = agent_config(doc.as_bytes()).expect("reads its own rendering");
            assert_eq!(back, cfg);
        }
    }

    #[test]
    fn document_shape() {
        let doc = render(&awkward());
        assert!(doc.starts_with("#cloud-config\n"), "{doc}");
        assert!(doc.is_ascii(), "the document is printable ASCII");
        assert!(
            doc.bytes()
                .all(|b| b == b'\n' || (b' '..=b'~').contains(&b)),
            "no control characters in the document"
        );
        assert!(
            doc.contains("  - path: \"/etc/shoal/agent.json\"\n"),
            "{doc}"
        );
        assert!(doc.contains("    permissions: \"0600\"\n"), "{doc}");
        assert!(doc.contains("    owner: \"root:root\"\n"), "{doc}");
        assert!(doc.contains(
            "runcmd:\n  - [\"systemctl\", \"enable\", \"--now\", \"--no-block\", \"shoal-agent.service\"]\n"
        ));
        // The configuration is JSON serde reads as the same config.
        let cfg = awkward();
        let json = config_json(&cfg);
        let parsed: AgentConfig = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed, cfg);
        // And the same value serde itself would write.
        let ours: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(ours, serde_json::to_value(&cfg).expect("serializes"));
    }

    #[test]
    fn absent_ca_is_absent() {
        let json = config_json(&config(None));
        assert!(!json.contains("ca_cert_pem"), "{json}");
    }

    #[test]
    fn secrets_never_in_debug_or_errors() {
        let cfg = config(Some(pem(600, false)));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains(KEY) && !dbg.contains(TOKEN), "{dbg}");
        assert!(!dbg.contains("BEGIN CERTIFICATE"), "{dbg}");

        // An entry whose JSON has a secret where a number belongs: serde_json would
        // quote it; our error must not.
        let doc = render(&cfg).replace(
            "\"deadline_secs\": 900",
            &format!("\"deadline_secs\": \"{TOKEN}\""),
        );
        let err = agent_config(doc.as_bytes()).expect_err("wrong type");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(TOKEN), "{text}");
            assert!(text.contains("not an agent configuration"), "{text}");
        }

        // TooLarge names sizes, never contents.
        let cfg = AgentConfig {
            ca_cert_pem: Some(pem(40_000, true)),
            ..config(None)
        };
        let err = render_for("aws", &cfg, Some(EC2_LIMIT)).expect_err("too large");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(KEY) && !text.contains(TOKEN), "{text}");
        }
    }

    #[test]
    fn small_documents_go_plain() {
        let cfg = config(Some(pem(1200, true)));
        let plain = render(&cfg).into_bytes();
        assert!(plain.len() < EC2_LIMIT);
        for limit in [None, Some(EC2_LIMIT), Some(AZURE_LIMIT)] {
            assert_eq!(render_for("aws", &cfg, limit).expect("fits"), plain);
        }
    }

    #[test]
    fn large_compressible_documents_are_gzipped() {
        // A 20 KiB, very regular "certificate": over EC2's limit plain, far under gzipped.
        let cfg = config(Some(pem(20_000, false)));
        let plain = render(&cfg);
        assert!(plain.len() > EC2_LIMIT, "plain {} bytes", plain.len());
        let bytes = render_for("aws", &cfg, Some(EC2_LIMIT)).expect("fits gzipped");
        assert!(bytes.starts_with(&GZIP_MAGIC));
        assert!(bytes.len() <= EC2_LIMIT);
        assert_eq!(gunzip(&bytes).expect("inflates"), plain.as_bytes());
        assert_eq!(agent_config(&bytes).expect("reads gzip"), cfg);
        // Deterministic: the same config compresses to the same bytes.
        assert_eq!(
            render_for("aws", &cfg, Some(EC2_LIMIT)).expect("again"),
            bytes
        );
        // Under Azure's larger limit the same document goes plain.
        assert_eq!(
            render_for("azure", &cfg, Some(AZURE_LIMIT)).expect("fits"),
            plain.as_bytes()
        );
    }

    #[test]
    fn incompressible_documents_are_refused_with_sizes() {
        // 30,000 characters of random base64 compress to ~22,500 bytes: over 16 KiB.
        let cfg = config(Some(pem(30_000, true)));
        let plain_len = render(&cfg).len();
        match render_for("aws", &cfg, Some(EC2_LIMIT)) {
            Err(UserDataError::TooLarge {
                provider,
                size,
                compressed,
                limit,
            }) => {
                assert_eq!(provider, "aws");
                assert_eq!(size, plain_len);
                assert!(compressed > EC2_LIMIT && compressed < size, "{compressed}");
                assert_eq!(limit, EC2_LIMIT);
                let msg = render_for("aws", &cfg, Some(EC2_LIMIT))
                    .expect_err("too large")
                    .to_string();
                assert!(msg.contains(&plain_len.to_string()), "{msg}");
                assert!(msg.contains("aws limit of 16384 bytes"), "{msg}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Azure takes it (plain is ~30 KiB), and no limit takes anything.
        assert!(render_for("azure", &cfg, Some(AZURE_LIMIT)).is_ok());
        assert!(render_for("local", &cfg, None).is_ok());
        // Over Azure's limit too, and random: refused there as well.
        let huge = config(Some(pem(120_000, true)));
        assert!(matches!(
            render_for("azure", &huge, Some(AZURE_LIMIT)),
            Err(UserDataError::TooLarge {
                limit: AZURE_LIMIT,
                ..
            })
        ));
    }

    #[test]
    fn each_provider_owns_its_limit() {
        use crate::providers::Provider as _;
        let aws = crate::providers::aws::AwsProvider::new();
        assert_eq!(aws.user_data_limit(), Some(16_384));
        assert_eq!(EC2_LIMIT, 16_384);
        assert_eq!(AZURE_LIMIT, 65_535);
    }

    #[test]
    fn unreadable_documents_get_clear_errors() {
        let msg = |bytes: &[u8]| agent_config(bytes).expect_err("invalid").to_string();
        assert!(msg(b"").contains("does not begin with `#cloud-config`"));
        assert!(msg(b"#!/bin/sh\necho hi\n").contains("does not begin with"));
        assert!(msg(b"#cloud-config\nruncmd: []\n").contains("no top-level `write_files:`"));
        assert!(msg(
            b"#cloud-config\nwrite_files:\n  - path: \"/etc/other\"\n    content: \"x\"\n"
        )
        .contains("no write_files entry for /etc/shoal/agent.json"));
        assert!(
            msg(b"#cloud-config\nwrite_files:\n  - path: /etc/shoal/agent.json\n")
                .contains("has no content")
        );
        assert!(
            msg(b"#cloud-config\nwrite_files:\n  - path: \"/etc/shoal/agent.json\n")
                .contains("line 3: unterminated")
        );
        assert!(msg(
            b"#cloud-config\nwrite_files:\n  - path: /etc/shoal/agent.json\n    encoding: b64\n    content: e30K\n"
        )
        .contains("encoding \"b64\""));
        assert!(msg(
            b"#cloud-config\nwrite_files:\n  - path: /etc/shoal/agent.json\n    content: '{'\n"
        )
        .contains("truncated JSON"));
        assert!(msg(&[0x1f, 0x8b, 0, 1, 2, 3]).contains("corrupt gzip"));
        assert!(msg(&[0xff, 0xfe, 0]).contains("not UTF-8"));
        // A gzip bomb is cut off.
        let bomb = gzip(&vec![b'a'; MAX_INFLATED_BYTES + 10]).expect("gzip");
        assert!(msg(&bomb).contains("inflates to more than"));
    }

    #[test]
    fn reads_other_quoting_styles() {
        // What an operator's hand edit might produce: single quotes, plain scalars,
        // several entries, comments, `|-`.
        let doc = "#cloud-config\n\
                   write_files:\n\
                   # a comment\n\
                   - path: /etc/motd\n  content: 'it''s here'\n\
                   - path: '/etc/shoal/agent.json'   \n  permissions: '0600'\n  content: |-\n    {\"metadata_url\": \"u\", \"cluster_key\": \"k\",\n     \"node_id\": \"n\", \"node_token\": \"t\"}\n\
                   runcmd:\n  - echo\n";
        let cfg = agent_config(doc.as_bytes()).expect("reads");
        assert_eq!(cfg.node_id, "n");
        assert_eq!(
            cfg.deadline_secs,
            shoal_protocol::DEFAULT_AGENT_DEADLINE_SECS
        );
    }

    #[test]
    fn yaml_escapes_round_trip() {
        let s = "a\"b\\c\n\t\r\u{0}\u{7f}\u{85}é\u{2028}😀";
        assert_eq!(scalar(&yaml_quoted(s), 1).expect("decodes"), s);
        assert!(yaml_quoted(s).is_ascii());
    }
}
