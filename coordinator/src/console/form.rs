//! Form bodies as browsers send them: `application/x-www-form-urlencoded` and
//! `multipart/form-data` (the create form, which carries an uploaded blueprint).
//!
//! The multipart reader is written here rather than taken from a crate (axum's
//! `multipart` feature pulls in `multer` and its dependencies) because the console
//! needs little of it: bodies are already bounded by the router's body limit and read
//! whole, and only `Content-Disposition`'s `name` and `filename` matter. It never
//! panics on any input (see the tests) and refuses what it does not understand.

use std::borrow::Cow;

/// Parts a form may have; the create form has about fifteen.
const MAX_FIELDS: usize = 64;

/// A form field: its text, or an uploaded file's bytes and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// Its value (a file's content).
    pub value: Vec<u8>,
    /// The file's name, for a file field.
    pub filename: Option<String>,
}

/// A parsed form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<Field>);

/// Why a body is not a form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// A content type other than the two form encodings.
    #[error(
        "the body is {0:?}, not a form (application/x-www-form-urlencoded or multipart/form-data)"
    )]
    ContentType(String),
    /// A multipart body that does not follow the format.
    #[error("the multipart form is malformed: {0}")]
    Multipart(&'static str),
    /// More parts than any console form has.
    #[error("the form has more than {MAX_FIELDS} fields")]
    TooManyFields,
}

impl Fields {
    /// Parses `body` as its `Content-Type` says.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Fields, FormError> {
        let ct = content_type.unwrap_or("");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-www-form-urlencoded" => urlencoded(body),
            "multipart/form-data" => {
                let boundary = parameter(ct, "boundary")
                    .ok_or(FormError::Multipart("no boundary in the content type"))?;
                multipart(body, &boundary)
            }
            _ => Err(FormError::ContentType(ct.to_string())),
        }
    }

    /// A text field's value (the first of that name), trimmed; `None` when absent or
    /// not UTF-8.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|f| f.name == name && f.filename.is_none())
            .and_then(|f| std::str::from_utf8(&f.value).ok())
            .map(str::trim)
    }

    /// Every non-empty value of a text field that may repeat (ticked checkboxes), in
    /// the order sent.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|f| f.name == name && f.filename.is_none())
            .filter_map(|f| std::str::from_utf8(&f.value).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// A text field's value, `None` when absent or empty.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.text(name).filter(|v| !v.is_empty())
    }

    /// A file field that holds a file (browsers send an empty part with an empty
    /// name when none was chosen).
    pub fn file(&self, name: &str) -> Option<&Field> {
        self.0.iter().find(|f| {
            f.name == name
                && (!f.value.is_empty() || f.filename.as_deref().is_some_and(|n| !n.is_empty()))
        })
    }
}

fn urlencoded(body: &[u8]) -> Result<Fields, FormError> {
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if out.len() == MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        out.push(Field {
            name: k.into_owned(),
            value: v.into_owned().into_bytes(),
            filename: None,
        });
    }
    Ok(Fields(out))
}

/// A parameter of a header value (`multipart/form-data; boundary=X`,
/// `form-data; name="a"; filename="b"`), unquoted.
fn parameter(value: &str, name: &str) -> Option<String> {
    let mut rest = value.split_once(';')?.1;
    loop {
        rest = rest.trim_start();
        let (k, after) = rest.split_once('=')?;
        let k = k.trim();
        let (v, next): (Cow<'_, str>, &str) = if let Some(q) = after.strip_prefix('"') {
            // A quoted string: `\` escapes the next character.
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end = end?;
            let next = q[end..].split_once(';').map_or("", |(_, n)| n);
            (Cow::Owned(v), next)
        } else {
            let (v, next) = after.split_once(';').unwrap_or((after, ""));
            (Cow::Borrowed(v.trim()), next)
        };
        if k.eq_ignore_ascii_case(name) {
            return Some(v.into_owned());
        }
        if next.is_empty() {
            return None;
        }
        rest = next;
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn multipart(body: &[u8], boundary: &str) -> Result<Fields, FormError> {
    // RFC 2046: 1 to 70 characters.
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(FormError::Multipart("a boundary of 1 to 70 characters"));
    }
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let next_part = format!("\r\n--{boundary}");
    let next_part = next_part.as_bytes();
    // The first delimiter may follow a preamble.
    let mut pos = if body.starts_with(delimiter) {
        delimiter.len()
    } else {
        find(body, next_part, 0).ok_or(FormError::Multipart("no opening boundary"))?
            + next_part.len()
    };
    let mut out = Vec::new();
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Ok(Fields(out));
        }
        // Transport padding (spaces, tabs) may follow a delimiter.
        let pad = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err(FormError::Multipart(
                "a boundary not followed by a line break",
            ));
        }
        pos += pad + 2;
        let head_end = find(body, b"\r\n\r\n", pos).ok_or(FormError::Multipart(
            "a part without the blank line after its headers",
        ))?;
        let head = std::str::from_utf8(&body[pos..head_end])
            .map_err(|_| FormError::Multipart("part headers that are not UTF-8"))?;
        let content_start = head_end + 4;
        let content_end = find(body, next_part, content_start)
            .ok_or(FormError::Multipart("a part without a closing boundary"))?;
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                return Err(FormError::Multipart("a part header without a colon"));
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                let v = v.trim();
                if !v
                    .split(';')
                    .next()
                    .is_some_and(|d| d.trim().eq_ignore_ascii_case("form-data"))
                {
                    return Err(FormError::Multipart("a part that is not form-data"));
                }
                name = parameter(v, "name");
                filename = parameter(v, "filename");
            }
        }
        let name = name.ok_or(FormError::Multipart("a part without a name"))?;
        if out.len() == MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        out.push(Field {
            name,
            value: body[content_start..content_end].to_vec(),
            filename,
        });
        pos = content_end + next_part.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_CT: &str =
        "multipart/form-data; boundary=----WebKitFormBoundaryx7Yq2mBG1vK3lqPe";

    fn chromium_body() -> Vec<u8> {
        let b = "------WebKitFormBoundaryx7Yq2mBG1vK3lqPe";
        format!(
            "{b}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc\r\n\
             {b}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n demo \r\n\
             {b}\r\nContent-Disposition: form-data; name=\"blueprint_file\"; filename=\"my %22bp%22.toml\"\r\nContent-Type: application/octet-stream\r\n\r\nname = \"x\"\r\n\r\n--not-the-boundary\r\n\
             {b}\r\nContent-Disposition: form-data; name=\"empty_file\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n\
             {b}--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_chromium_multipart_body_is_read_part_by_part() {
        let f = Fields::parse(Some(CHROMIUM_CT), &chromium_body()).expect("parse");
        assert_eq!(f.text("csrf"), Some("abc"));
        assert_eq!(f.text("name"), Some("demo"));
        let file = f.file("blueprint_file").expect("file");
        assert_eq!(file.filename.as_deref(), Some("my %22bp%22.toml"));
        // The content keeps its own line breaks and anything short of the boundary.
        assert_eq!(file.value, b"name = \"x\"\r\n\r\n--not-the-boundary");
        assert!(f.file("empty_file").is_none(), "no file was chosen");
        assert!(
            f.text("blueprint_file").is_none(),
            "a file is not a text field"
        );
        assert!(f.text("missing").is_none());
    }

    #[test]
    fn urlencoded_bodies_are_decoded() {
        let f = Fields::parse(
            Some("application/x-www-form-urlencoded"),
            b"token=a%2Bb+c&csrf=x&empty=",
        )
        .expect("parse");
        assert_eq!(f.text("token"), Some("a+b c"));
        assert_eq!(f.non_empty("empty"), None);
        assert_eq!(f.text("empty"), Some(""));
    }

    #[test]
    fn other_bodies_are_refused_with_a_reason() {
        assert!(matches!(
            Fields::parse(Some("application/json"), b"{}"),
            Err(FormError::ContentType(_))
        ));
        assert!(matches!(
            Fields::parse(None, b"a=b"),
            Err(FormError::ContentType(_))
        ));
        for (ct, body) in [
            ("multipart/form-data", &b"--x\r\n\r\n--x--"[..]),
            ("multipart/form-data; boundary=", b""),
            ("multipart/form-data; boundary=x", b"no boundary at all"),
            (
                "multipart/form-data; boundary=x",
                b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
            ),
            (
                "multipart/form-data; boundary=x",
                b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--",
            ),
            (
                "multipart/form-data; boundary=x",
                b"--x\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nv\r\n--x--",
            ),
            ("multipart/form-data; boundary=x", b"--xjunk"),
            (
                "multipart/form-data; boundary=x",
                b"--x\r\nno colon\r\n\r\nv\r\n--x--",
            ),
        ] {
            assert!(Fields::parse(Some(ct), body).is_err(), "{ct} {body:?}");
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("f{i}=1&")).collect();
        assert_eq!(
            Fields::parse(Some("application/x-www-form-urlencoded"), many.as_bytes()),
            Err(FormError::TooManyFields)
        );
    }

    #[test]
    fn header_parameters_are_unquoted() {
        assert_eq!(
            parameter("multipart/form-data; boundary=\"a b\\\"c\"", "boundary").as_deref(),
            Some("a b\"c")
        );
        assert_eq!(
            parameter("form-data; name=\"x;y\"; filename=f.toml", "filename").as_deref(),
            Some("f.toml")
        );
        assert_eq!(parameter("form-data; name=\"x", "name"), None);
        assert_eq!(parameter("form-data", "name"), None);
    }

    #[test]
    fn no_input_makes_the_reader_panic() {
        // Every prefix of a real body, and random single-byte mutations of it.
        let body = chromium_body();
        for n in 0..body.len() {
            let _ = Fields::parse(Some(CHROMIUM_CT), &body[..n]);
        }
        for _ in 0..5000 {
            let mut b = body.clone();
            for _ in 0..rand::random_range(1..4) {
                let i = rand::random_range(0..b.len());
                b[i] = match rand::random_range(0..4) {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b'-',
                    _ => rand::random(),
                };
            }
            let _ = Fields::parse(Some(CHROMIUM_CT), &b);
        }
    }
}
