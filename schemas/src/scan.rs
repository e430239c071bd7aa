//! A single-pass scanner for one wire message: a JSON object read straight
//! into the fields the decoder knows, borrowing every string that has no
//! escapes from the payload.
//!
//! It accepts exactly the JSON that `serde_json::from_str` accepts for the
//! wire struct, and reads the same values (the tests check this
//! differentially against a serde-derived reference on fuzzed input):
//! - RFC 8259 syntax, whitespace around values, nothing after the object;
//! - a known field given twice is an error, an unknown one is skipped;
//! - lone surrogate escapes are errors in keys and in known fields' strings,
//!   and only hex-checked inside skipped values (serde does the same);
//! - an integer is `Int` when it fits `i64` (`-0` does not, as in serde);
//!   other numbers are `Other`, and one that overflows `f64` is an error in
//!   a known field (inside skipped values only the syntax is checked).
//!
//! Nested values are skipped iteratively, so no input can exhaust the stack.

use std::borrow::Cow;

/// Any JSON value, kept just precisely enough to validate it with a typed
/// reason naming the field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool,
    Int(i64),
    Other,
    Str(Cow<'a, str>),
}

/// The payload as parsed, before validation. Unknown fields are ignored so
/// that newer pollers can add fields without breaking older ingest. An
/// explicit `null` reads as absent.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RawMessage<'a> {
    pub v: Option<Scalar<'a>>,
    pub r#type: Option<Scalar<'a>>,
    pub tenant: Option<Scalar<'a>>,
    pub poller: Option<Scalar<'a>>,
    pub epoch: Option<Scalar<'a>>,
    pub seq: Option<Scalar<'a>>,
    pub event_id: Option<Scalar<'a>>,
    pub time: Option<Scalar<'a>>,
    pub node: Option<Scalar<'a>>,
    pub node_uuid: Option<Scalar<'a>>,
    pub event: Option<Scalar<'a>>,
    pub element: Option<Scalar<'a>>,
    pub level: Option<Scalar<'a>>,
    pub state: Option<Scalar<'a>>,
    pub details: Option<Scalar<'a>>,
    /// The raw JSON text of the value, whatever its type.
    pub attrs: Option<&'a str>,
    pub spool_depth: Option<Scalar<'a>>,
}

/// Not JSON, or not the wire struct (for example a duplicated field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalid;

type Res<T> = Result<T, Invalid>;

/// Scans one message. `text` is the whole payload.
pub(crate) fn scan(text: &str) -> Res<RawMessage<'_>> {
    let mut s = Scanner { text, b: text.as_bytes(), pos: 0, seen: 0 };
    let mut m = RawMessage::default();
    s.ws();
    s.expect(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            s.expect(b'"')?;
            let key = s.string()?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            s.field(&key, &mut m)?;
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return Err(Invalid),
            }
        }
    }
    s.ws();
    if s.pos != s.b.len() {
        return Err(Invalid);
    }
    Ok(m)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Known fields read so far, one bit each (a repeat is an error, even
    /// after `null`).
    seen: u32,
}

/// Bytes a string scan must stop at: `"`, `\` and the control characters.
const fn stops() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
}
static STOP: [bool; 256] = stops();

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The string stops among the 8 bytes of `w` (little-endian), as the high
/// bit of each such byte. Bytes above the first stop may be flagged falsely
/// (borrows propagate upwards), so only the lowest flag is exact.
#[inline]
fn stops_in(w: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let below_space = w.wrapping_sub(LO * 0x20) & !w & HI;
    zero(w ^ (LO * u64::from(b'"'))) | zero(w ^ (LO * u64::from(b'\\'))) | below_space
}

impl<'a> Scanner<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn next(&mut self) -> Res<u8> {
        let c = *self.b.get(self.pos).ok_or(Invalid)?;
        self.pos += 1;
        Ok(c)
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Res<()> {
        if self.next()? == c { Ok(()) } else { Err(Invalid) }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Reads one known field's value into `m`, or skips an unknown one.
    fn field(&mut self, key: &str, m: &mut RawMessage<'a>) -> Res<()> {
        let (bit, slot) = match key {
            "v" => (0, &mut m.v),
            "type" => (1, &mut m.r#type),
            "tenant" => (2, &mut m.tenant),
            "poller" => (3, &mut m.poller),
            "epoch" => (4, &mut m.epoch),
            "seq" => (5, &mut m.seq),
            "event_id" => (6, &mut m.event_id),
            "time" => (7, &mut m.time),
            "node" => (8, &mut m.node),
            "node_uuid" => (9, &mut m.node_uuid),
            "event" => (10, &mut m.event),
            "element" => (11, &mut m.element),
            "level" => (12, &mut m.level),
            "state" => (13, &mut m.state),
            "details" => (14, &mut m.details),
            "spool_depth" => (15, &mut m.spool_depth),
            "attrs" => {
                self.see(16)?;
                let start = self.pos;
                self.skip_value()?;
                let raw = &self.text[start..self.pos];
                m.attrs = (raw != "null").then_some(raw);
                return Ok(());
            }
            _ => return self.skip_value(),
        };
        self.see(bit)?;
        *slot = match self.scalar()? {
            Scalar::Null => None,
            s => Some(s),
        };
        Ok(())
    }

    fn see(&mut self, bit: u32) -> Res<()> {
        if self.seen & (1 << bit) != 0 {
            return Err(Invalid);
        }
        self.seen |= 1 << bit;
        Ok(())
    }

    /// One value of a known field.
    fn scalar(&mut self) -> Res<Scalar<'a>> {
        match self.peek().ok_or(Invalid)? {
            b'"' => {
                self.pos += 1;
                Ok(Scalar::Str(self.string()?))
            }
            b'-' | b'0'..=b'9' => self.number(false),
            b't' => self.literal(b"true", Scalar::Bool),
            b'f' => self.literal(b"false", Scalar::Bool),
            b'n' => self.literal(b"null", Scalar::Null),
            b'{' | b'[' => {
                self.skip_value()?;
                Ok(Scalar::Other)
            }
            _ => Err(Invalid),
        }
    }

    fn literal(&mut self, word: &[u8], v: Scalar<'a>) -> Res<Scalar<'a>> {
        self.rest(word)?;
        Ok(v)
    }

    /// The rest of a string whose opening quote has been read. Borrowed
    /// unless it holds escapes.
    fn string(&mut self) -> Res<Cow<'a, str>> {
        let start = self.pos;
        self.skip_to_stop();
        match self.next()? {
            b'"' => Ok(Cow::Borrowed(&self.text[start..self.pos - 1])),
            b'\\' => {
                let mut out = String::with_capacity(self.pos - start + 16);
                out.push_str(&self.text[start..self.pos - 1]);
                self.escape(&mut out)?;
                loop {
                    let from = self.pos;
                    self.skip_to_stop();
                    out.push_str(&self.text[from..self.pos]);
                    match self.next()? {
                        b'"' => return Ok(Cow::Owned(out)),
                        b'\\' => self.escape(&mut out)?,
                        _ => return Err(Invalid),
                    }
                }
            }
            _ => Err(Invalid),
        }
    }

    /// Skips a string (opening quote read) without keeping it.
    fn skip_string(&mut self) -> Res<()> {
        loop {
            self.skip_to_stop();
            match self.next()? {
                b'"' => return Ok(()),
                b'\\' => self.skip_escape()?,
                _ => return Err(Invalid),
            }
        }
    }

    /// Advances to the next `"`, `\` or control byte (or the end).
    #[inline]
    fn skip_to_stop(&mut self) {
        while let Some(chunk) = self.b.get(self.pos..self.pos + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let m = stops_in(w);
            if m != 0 {
                self.pos += (m.trailing_zeros() / 8) as usize;
                return;
            }
            self.pos += 8;
        }
        while let Some(&c) = self.b.get(self.pos) {
            if STOP[usize::from(c)] {
                break;
            }
            self.pos += 1;
        }
    }

    /// One escape (the backslash read), appended to `out`. Surrogates must
    /// come in pairs.
    fn escape(&mut self, out: &mut String) -> Res<()> {
        let c = match self.next()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                match hi {
                    0xD800..=0xDBFF => {
                        if !self.b[self.pos..].starts_with(b"\\u") {
                            return Err(Invalid);
                        }
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(Invalid);
                        }
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(cp).ok_or(Invalid)?
                    }
                    0xDC00..=0xDFFF => return Err(Invalid),
                    _ => char::from_u32(hi).ok_or(Invalid)?,
                }
            }
            _ => return Err(Invalid),
        };
        out.push(c);
        Ok(())
    }

    /// One escape inside a skipped value: only its form is checked.
    fn skip_escape(&mut self) -> Res<()> {
        match self.next()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => self.hex4().map(drop),
            _ => Err(Invalid),
        }
    }

    fn hex4(&mut self) -> Res<u32> {
        let digits = self.b.get(self.pos..self.pos + 4).ok_or(Invalid)?;
        let mut v = 0u32;
        for &d in digits {
            v = v * 16 + char::from(d).to_digit(16).ok_or(Invalid)?;
        }
        self.pos += 4;
        Ok(v)
    }

    /// A number: `Int` when it is an integer that fits `i64`. With `skip`,
    /// only its syntax is checked (serde accepts `1e400` in a skipped value).
    fn number(&mut self, skip: bool) -> Res<Scalar<'a>> {
        let start = self.pos;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.pos += 1;
        }
        let mut v: u64 = 0;
        let mut overflow = false;
        match self.next()? {
            b'0' => {}
            d @ b'1'..=b'9' => {
                v = u64::from(d - b'0');
                while let Some(d @ b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                    match v.checked_mul(10).and_then(|x| x.checked_add(u64::from(d - b'0'))) {
                        Some(x) => v = x,
                        None => overflow = true,
                    }
                }
            }
            _ => return Err(Invalid),
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            float = true;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            float = true;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        if skip {
            return Ok(Scalar::Other);
        }
        if float || overflow {
            let f: f64 = self.text[start..self.pos].parse().map_err(|_| Invalid)?;
            return if f.is_finite() { Ok(Scalar::Other) } else { Err(Invalid) };
        }
        if neg {
            // As serde_json: a negative integer is an i64 unless negating it
            // wraps to zero or above (`-0`, or beyond `i64::MIN`).
            let n = (v as i64).wrapping_neg();
            Ok(if n < 0 { Scalar::Int(n) } else { Scalar::Other })
        } else {
            Ok(i64::try_from(v).map_or(Scalar::Other, Scalar::Int))
        }
    }

    /// One or more decimal digits.
    fn digits(&mut self) -> Res<()> {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        if self.pos == start { Err(Invalid) } else { Ok(()) }
    }

    /// Skips one value of any type, checking its syntax. Nesting is tracked
    /// on a heap stack, not by recursion.
    fn skip_value(&mut self) -> Res<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value starts here.
            self.ws();
            match self.next()? {
                b'"' => self.skip_string()?,
                b'{' => {
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(b'}');
                        self.key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                b'-' | b'0'..=b'9' => {
                    self.pos -= 1;
                    self.number(true)?;
                }
                b't' => self.rest(b"rue")?,
                b'f' => self.rest(b"alse")?,
                b'n' => self.rest(b"ull")?,
                _ => return Err(Invalid),
            }
            // A value ended: close what it completes, up to the next value.
            loop {
                let Some(&close) = open.last() else { return Ok(()) };
                self.ws();
                let c = self.next()?;
                if c == close {
                    open.pop();
                } else if c == b',' {
                    if close == b'}' {
                        self.key()?;
                    }
                    break;
                } else {
                    return Err(Invalid);
                }
            }
        }
    }

    /// An object key inside a skipped value, and its colon.
    fn key(&mut self) -> Res<()> {
        self.ws();
        self.expect(b'"')?;
        self.skip_string()?;
        self.ws();
        self.expect(b':')
    }

    /// Exactly `tail` next (the rest of a literal).
    fn rest(&mut self, tail: &[u8]) -> Res<()> {
        if self.b[self.pos..].starts_with(tail) {
            self.pos += tail.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }
}
