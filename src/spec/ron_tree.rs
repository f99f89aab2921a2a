//! A small RON parser that keeps the source position of every value.
//!
//! The `ron` crate deserialises straight into types and forgets where things were; ddexp's
//! errors must point at the line and column of the offending field, and `--set` must edit
//! the document before it is typed. So experiment files are first parsed into this tree:
//! values with byte spans, struct fields with the span of their name.
//!
//! The grammar is RON's data subset: structs `(a: 1)`, named structs and enum variants
//! `Name(a: 1)`, tuples `(1, 2)`, newtype and tuple variants `Name(x)`, unit variants
//! `Name`, `Some(x)` / `None`, lists `[..]`, maps `{k: v}`, strings (with escapes and raw
//! strings), chars, numbers (decimal, hex, octal, binary, underscores, `inf`, `NaN`),
//! booleans, comments (`//` and nested `/* */`) and the `#![enable(..)]` header.

use std::ops::Range;

/// The deepest nesting of brackets a document may have. An experiment file nests a handful
/// of levels; the limit keeps the parser (and every walk over its tree, dropping it
/// included) from overflowing the stack on a file or `--set` value of thousands of brackets.
pub const MAX_DEPTH: usize = 64;

/// The UTF-8 byte-order mark some editors put at the start of a file. It carries no
/// meaning in UTF-8 and is skipped.
const BOM: char = '\u{feff}';

/// Byte range in the source.
pub type Span = Range<usize>;

/// A value and where it is in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

/// A name in the source (struct field, struct or variant name).
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: Ident,
    pub value: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Char(char),
    /// `None`
    None,
    /// `Some(x)`
    Some(Box<Node>),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// `(a: 1)` or `Name(a: 1)`.
    Struct {
        name: Option<Ident>,
        fields: Vec<Field>,
    },
    /// `(1, 2)`, `()` or `Name(1, 2)`.
    Tuple {
        name: Option<Ident>,
        items: Vec<Node>,
    },
    /// A bare identifier: a unit variant or unit struct.
    Unit(Ident),
}

impl Value {
    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Bool(b) => format!("the boolean `{b}`"),
            Value::Int(i) => format!("the integer `{i}`"),
            Value::Float(f) => format!("the number `{f}`"),
            Value::Str(s) => format!("the string {s:?}"),
            Value::Char(c) => format!("the char {c:?}"),
            Value::None => "`None`".into(),
            Value::Some(_) => "`Some(..)`".into(),
            Value::List(_) => "a list".into(),
            Value::Map(_) => "a map".into(),
            Value::Struct { name: Some(n), .. } => format!("`{}(..)`", n.name),
            Value::Struct { name: None, .. } => "a struct `(..)`".into(),
            Value::Tuple { name: Some(n), .. } => format!("`{}(..)`", n.name),
            Value::Tuple { name: None, items } if items.is_empty() => "`()`".into(),
            Value::Tuple { name: None, .. } => "a tuple".into(),
            Value::Unit(i) => format!("`{}`", i.name),
        }
    }
}

/// A syntax error with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub span: Span,
    pub message: String,
}

/// Parses a document whose spans start at `base` in a larger offset space (see
/// `diagnostics::Sources`), e.g. the value of a `--set` override.
pub fn parse_at(src: &str, base: usize) -> Result<Node, ParseError> {
    let mut node = parse(src).map_err(|e| ParseError {
        span: e.span.start + base..e.span.end + base,
        message: e.message,
    })?;
    shift(&mut node, base);
    Ok(node)
}

fn shift(node: &mut Node, by: usize) {
    let move_span = |s: &mut Span| *s = s.start + by..s.end + by;
    move_span(&mut node.span);
    match &mut node.value {
        Value::Some(inner) => shift(inner, by),
        Value::List(items) => items.iter_mut().for_each(|n| shift(n, by)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            shift(k, by);
            shift(v, by);
        }),
        Value::Struct { name, fields } => {
            if let Some(n) = name {
                move_span(&mut n.span);
            }
            for f in fields {
                move_span(&mut f.name.span);
                shift(&mut f.value, by);
            }
        }
        Value::Tuple { name, items } => {
            if let Some(n) = name {
                move_span(&mut n.span);
            }
            items.iter_mut().for_each(|n| shift(n, by));
        }
        Value::Unit(i) => move_span(&mut i.span),
        Value::Bool(_)
        | Value::Int(_)
        | Value::Float(_)
        | Value::Str(_)
        | Value::Char(_)
        | Value::None => {}
    }
}

/// Parses a whole document: one value, optionally preceded by `#![enable(..)]` attributes.
pub fn parse(src: &str) -> Result<Node, ParseError> {
    let pos = if src.starts_with(BOM) {
        BOM.len_utf8()
    } else {
        0
    };
    let mut p = Parser { src, pos, depth: 0 };
    p.skip_trivia()?;
    while p.src[p.pos..].starts_with("#!") {
        p.attribute()?;
        p.skip_trivia()?;
    }
    let node = p.value()?;
    p.skip_trivia()?;
    if p.pos < src.len() {
        return Err(p.error_here("expected the end of the file after the experiment"));
    }
    Ok(node)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Brackets open around the value being parsed.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn error_here(&self, message: impl Into<String>) -> ParseError {
        let end = self.peek().map_or(self.pos, |c| self.pos + c.len_utf8());
        ParseError {
            span: self.pos..end,
            message: message.into(),
        }
    }

    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the file".into(),
            Some(c) => describe_char(c),
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error_here(format!("expected {what}, found {}", self.found())))
        }
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        loop {
            let rest = &self.src[self.pos..];
            if rest.starts_with("//") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if rest.starts_with("/*") {
                let start = self.pos;
                self.pos += 2;
                let mut depth = 1;
                while depth > 0 {
                    let rest = &self.src[self.pos..];
                    if rest.starts_with("/*") {
                        depth += 1;
                        self.pos += 2;
                    } else if rest.starts_with("*/") {
                        depth -= 1;
                        self.pos += 2;
                    } else if self.bump().is_none() {
                        return Err(ParseError {
                            span: start..start + 2,
                            message: "unterminated block comment".into(),
                        });
                    }
                }
            } else if self.peek().is_some_and(char::is_whitespace) {
                self.bump();
            } else {
                return Ok(());
            }
        }
    }

    /// `#![enable(ext, ...)]`: accepted and ignored. ddexp's reading already treats `x` and
    /// `Some(x)` alike for optional fields and needs no other extension.
    fn attribute(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        let close = self.src[self.pos..].find(']').ok_or_else(|| ParseError {
            span: start..start + 2,
            message: "unterminated `#![...]` attribute".into(),
        })?;
        self.pos += close + 1;
        Ok(())
    }

    fn ident(&mut self) -> Option<Ident> {
        let start = self.pos;
        let first = self.peek()?;
        if !(first.is_ascii_alphabetic() || first == '_') {
            return None;
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += 1;
        }
        Some(Ident {
            name: self.src[start..self.pos].to_string(),
            span: start..self.pos,
        })
    }

    fn value(&mut self) -> Result<Node, ParseError> {
        self.skip_trivia()?;
        if self.depth >= MAX_DEPTH {
            return Err(self.error_here(format!(
                "values nested more than {MAX_DEPTH} levels deep (an experiment needs a handful)"
            )));
        }
        self.depth += 1;
        let value = self.value_at_depth();
        self.depth -= 1;
        value
    }

    fn value_at_depth(&mut self) -> Result<Node, ParseError> {
        let start = self.pos;
        let value = match self.peek() {
            None => return Err(self.error_here("expected a value, found the end of the file")),
            Some('[') => self.list()?,
            Some('{') => self.map()?,
            Some('(') => self.parenthesised(None)?,
            Some('"') => Value::Str(self.string()?),
            Some('\'') => self.char_literal()?,
            Some('r')
                if self.src[self.pos..].starts_with("r\"")
                    || self.src[self.pos..].starts_with("r#") =>
            {
                Value::Str(self.raw_string()?)
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number()?,
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let ident = self.ident().expect("starts with a letter");
                match ident.name.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "inf" => Value::Float(f64::INFINITY),
                    "NaN" => Value::Float(f64::NAN),
                    "None" => Value::None,
                    "Some" => {
                        self.skip_trivia()?;
                        self.expect('(', "`(` after `Some`")?;
                        let inner = self.value()?;
                        self.skip_trivia()?;
                        if self.peek() == Some(',') {
                            self.pos += 1;
                            self.skip_trivia()?;
                        }
                        self.expect(')', "`)` closing `Some(`")?;
                        Value::Some(Box::new(inner))
                    }
                    _ => {
                        // A name directly followed by `(` is a named struct or a variant with
                        // data; otherwise it is a unit variant.
                        let after_name = self.pos;
                        self.skip_trivia()?;
                        if self.peek() == Some('(') {
                            self.parenthesised(Some(ident))?
                        } else {
                            self.pos = after_name;
                            Value::Unit(ident)
                        }
                    }
                }
            }
            Some(_) => {
                return Err(self.error_here(format!("expected a value, found {}", self.found())));
            }
        };
        Ok(Node {
            value,
            span: start..self.pos,
        })
    }

    /// `( ... )`: a struct if the first element is `name:`, else a tuple.
    fn parenthesised(&mut self, name: Option<Ident>) -> Result<Value, ParseError> {
        self.expect('(', "`(`")?;
        self.skip_trivia()?;
        if self.peek() == Some(')') {
            self.pos += 1;
            return Ok(Value::Tuple {
                name,
                items: vec![],
            });
        }
        if self.at_field() {
            let mut fields: Vec<Field> = vec![];
            loop {
                self.skip_trivia()?;
                if self.peek() == Some(')') {
                    self.pos += 1;
                    break;
                }
                let Some(field_name) = self.ident() else {
                    return Err(self.error_here(format!(
                        "expected a field name or `)`, found {}",
                        self.found()
                    )));
                };
                if let Some(prev) = fields.iter().find(|f| f.name.name == field_name.name) {
                    let (line, col) = line_col(self.src, prev.name.span.start);
                    return Err(ParseError {
                        span: field_name.span,
                        message: format!(
                            "field `{}` is given twice (first at line {line}, column {col})",
                            prev.name.name
                        ),
                    });
                }
                self.skip_trivia()?;
                self.expect(':', &format!("`:` after field `{}`", field_name.name))?;
                let value = self.value()?;
                fields.push(Field {
                    name: field_name,
                    value,
                });
                self.skip_trivia()?;
                match self.peek() {
                    Some(',') => self.pos += 1,
                    Some(')') => {
                        self.pos += 1;
                        break;
                    }
                    _ => {
                        return Err(self.error_here(format!(
                            "expected `,` or `)` after a field, found {}",
                            self.found()
                        )));
                    }
                }
            }
            Ok(Value::Struct { name, fields })
        } else {
            let items = self.sequence(')')?;
            Ok(Value::Tuple { name, items })
        }
    }

    /// Whether the parser is at `ident :` (and not `ident ::` or a value).
    fn at_field(&mut self) -> bool {
        let save = self.pos;
        let is_field = self.ident().is_some()
            && self.skip_trivia().is_ok()
            && self.src[self.pos..].starts_with(':')
            && !self.src[self.pos..].starts_with("::");
        self.pos = save;
        is_field
    }

    /// Comma-separated values up to `close` (already past the opening bracket).
    fn sequence(&mut self, close: char) -> Result<Vec<Node>, ParseError> {
        let mut items = vec![];
        loop {
            self.skip_trivia()?;
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(items);
            }
            items.push(self.value()?);
            self.skip_trivia()?;
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(c) if c == close => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => {
                    return Err(self
                        .error_here(format!("expected `,` or `{close}`, found {}", self.found())));
                }
            }
        }
    }

    fn list(&mut self) -> Result<Value, ParseError> {
        self.expect('[', "`[`")?;
        Ok(Value::List(self.sequence(']')?))
    }

    fn map(&mut self) -> Result<Value, ParseError> {
        self.expect('{', "`{`")?;
        let mut entries = vec![];
        loop {
            self.skip_trivia()?;
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(Value::Map(entries));
            }
            let key = self.value()?;
            self.skip_trivia()?;
            self.expect(':', "`:` after a map key")?;
            let value = self.value()?;
            entries.push((key, value));
            self.skip_trivia()?;
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    return Ok(Value::Map(entries));
                }
                _ => {
                    return Err(self.error_here(format!(
                        "expected `,` or `}}` in a map, found {}",
                        self.found()
                    )));
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.expect('"', "`\"`")?;
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(ParseError {
                        span: start..start + 1,
                        message: "unterminated string".into(),
                    });
                }
                Some('"') => return Ok(out),
                Some('\\') => out.push(self.escape()?),
                Some(c) => out.push(c),
            }
        }
    }

    fn escape(&mut self) -> Result<char, ParseError> {
        let at = self.pos - 1;
        let bad = |p: &Self| ParseError {
            span: at..p.pos,
            message: "invalid escape sequence".into(),
        };
        Ok(match self.bump() {
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('0') => '\0',
            Some('\\') => '\\',
            Some('"') => '"',
            Some('\'') => '\'',
            Some('u') => {
                if self.bump() != Some('{') {
                    return Err(bad(self));
                }
                let hex_start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                    self.pos += 1;
                }
                let code = u32::from_str_radix(&self.src[hex_start..self.pos], 16)
                    .ok()
                    .and_then(char::from_u32);
                if self.bump() != Some('}') {
                    return Err(bad(self));
                }
                code.ok_or_else(|| bad(self))?
            }
            _ => return Err(bad(self)),
        })
    }

    fn raw_string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1; // r
        let hashes = self.src[self.pos..]
            .chars()
            .take_while(|&c| c == '#')
            .count();
        self.pos += hashes;
        self.expect('"', "`\"` in a raw string")?;
        let terminator = format!("\"{}", "#".repeat(hashes));
        let Some(len) = self.src[self.pos..].find(&terminator) else {
            return Err(ParseError {
                span: start..start + 1,
                message: "unterminated raw string".into(),
            });
        };
        let s = self.src[self.pos..self.pos + len].to_string();
        self.pos += len + terminator.len();
        Ok(s)
    }

    fn char_literal(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let c = match self.bump() {
            Some('\\') => self.escape()?,
            Some(c) => c,
            None => return Err(self.error_here("unterminated char")),
        };
        if self.bump() != Some('\'') {
            return Err(ParseError {
                span: start..self.pos,
                message: "expected `'` closing a char".into(),
            });
        }
        Ok(Value::Char(c))
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let negative = match self.peek() {
            Some('-') => {
                self.pos += 1;
                true
            }
            Some('+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let rest = &self.src[self.pos..];
        if let Some(word) = ["inf", "NaN"].into_iter().find(|w| rest.starts_with(w)) {
            self.pos += word.len();
            let v = if word == "inf" {
                f64::INFINITY
            } else {
                f64::NAN
            };
            return Ok(Value::Float(if negative { -v } else { v }));
        }
        let radix = match rest.get(..2) {
            Some("0x") => 16,
            Some("0o") => 8,
            Some("0b") => 2,
            _ => 10,
        };
        if radix != 10 {
            self.pos += 2;
            let digits_start = self.pos;
            while self.peek().is_some_and(|c| c.is_digit(radix) || c == '_') {
                self.pos += 1;
            }
            let digits: String = self.src[digits_start..self.pos].replace('_', "");
            let magnitude = i128::from_str_radix(&digits, radix).map_err(|_| ParseError {
                span: start..self.pos,
                message: "invalid integer".into(),
            })?;
            return Ok(Value::Int(if negative { -magnitude } else { magnitude }));
        }
        let mut is_float = false;
        while let Some(c) = self.peek() {
            match c {
                '0'..='9' | '_' => self.pos += 1,
                '.' => {
                    // `1.` is a float; `1..` is not RON at all.
                    is_float = true;
                    self.pos += 1;
                }
                'e' | 'E' => {
                    is_float = true;
                    self.pos += 1;
                    if matches!(self.peek(), Some('+') | Some('-')) {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
        let text: String = self.src[start..self.pos].replace('_', "");
        let invalid = |p: &Self| ParseError {
            span: start..p.pos.max(start + 1),
            message: format!("invalid number `{}`", &p.src[start..p.pos]),
        };
        if is_float {
            text.parse::<f64>()
                .map(Value::Float)
                .map_err(|_| invalid(self))
        } else {
            text.parse::<i128>()
                .map(Value::Int)
                .map_err(|_| invalid(self))
        }
    }
}

/// A character as an error message shows it: printable ones in backquotes, the others
/// (invisible, control, byte-order mark) by code point and name, so the message says what is
/// there even when the terminal shows nothing.
fn describe_char(c: char) -> String {
    match c {
        BOM => "a byte-order mark (U+FEFF) inside the file".into(),
        '\u{200b}' => "a zero-width space (U+200B)".into(),
        '\u{a0}' => "a no-break space (U+00A0)".into(),
        c if c.is_control() || c.is_whitespace() || c.is_ascii_whitespace() => {
            format!("the invisible character U+{:04X}", c as u32)
        }
        c if ('\u{200c}'..='\u{200f}').contains(&c) || ('\u{2060}'..='\u{206f}').contains(&c) => {
            format!("the invisible character U+{:04X}", c as u32)
        }
        c => format!("`{c}`"),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(src: &str) -> Value {
        parse(src).unwrap().value
    }

    #[test]
    fn scalars() {
        assert_eq!(value("true"), Value::Bool(true));
        assert_eq!(value("-12"), Value::Int(-12));
        assert_eq!(value("1_000"), Value::Int(1000));
        assert_eq!(value("0x1f"), Value::Int(31));
        assert_eq!(value("3e-4"), Value::Float(3e-4));
        assert_eq!(value("1.5"), Value::Float(1.5));
        assert_eq!(value("\"a\\n\\u{41}\""), Value::Str("a\nA".into()));
        assert_eq!(value("r#\"x\"y\"#"), Value::Str("x\"y".into()));
        assert_eq!(value("'c'"), Value::Char('c'));
        assert_eq!(value("None"), Value::None);
        assert!(matches!(value("-inf"), Value::Float(f) if f == f64::NEG_INFINITY));
    }

    #[test]
    fn structure_and_spans() {
        let src = "// c\n(\n  name: \"x\", /* b /* nested */ */\n  model: D3pmAbsorbing(timesteps: 10),\n  betas: (0.9, 0.98),\n  sampler: Uniform,\n  list: [1, 2,],\n)";
        let node = parse(src).unwrap();
        let Value::Struct { name: None, fields } = node.value else {
            panic!("expected a struct")
        };
        let names: Vec<_> = fields.iter().map(|f| f.name.name.as_str()).collect();
        assert_eq!(names, ["name", "model", "betas", "sampler", "list"]);
        assert_eq!(line_col(src, fields[1].name.span.start), (4, 3));
        let Value::Struct {
            name: Some(n),
            fields: inner,
        } = &fields[1].value.value
        else {
            panic!("expected a named struct")
        };
        assert_eq!(n.name, "D3pmAbsorbing");
        assert_eq!(&src[inner[0].value.span.clone()], "10");
        assert!(
            matches!(&fields[2].value.value, Value::Tuple { name: None, items } if items.len() == 2)
        );
        assert!(matches!(&fields[3].value.value, Value::Unit(i) if i.name == "Uniform"));
        assert!(matches!(&fields[4].value.value, Value::List(items) if items.len() == 2));
    }

    #[test]
    fn errors_are_located() {
        let src = "(\n  a: 1,\n  b: [1 2],\n)";
        let err = parse(src).unwrap_err();
        assert_eq!(line_col(src, err.span.start), (3, 9));
        assert!(
            err.message.contains("expected `,` or `]`"),
            "{}",
            err.message
        );

        let err = parse("(a: 1, a: 2)").unwrap_err();
        assert!(err.message.contains("given twice"), "{}", err.message);

        let err = parse("(a: \"open)").unwrap_err();
        assert!(err.message.contains("unterminated string"));

        let err = parse("(a: 1) x").unwrap_err();
        assert!(err.message.contains("end of the file"));
    }

    #[test]
    fn parse_at_shifts_every_span() {
        let node = parse_at("X(a: [1])", 100).unwrap();
        assert_eq!(node.span, 100..109);
        let Value::Struct {
            name: Some(n),
            fields,
        } = node.value
        else {
            panic!("expected a named struct")
        };
        assert_eq!(n.span, 100..101);
        assert_eq!(fields[0].name.span, 102..103);
        let err = parse_at("[1 2]", 50).unwrap_err();
        assert_eq!(err.span.start, 53);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = parse(&deep).unwrap_err();
        assert!(
            err.message.contains("nested more than 64"),
            "{}",
            err.message
        );
        assert_eq!(err.span.start, MAX_DEPTH);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let err = parse(&format!("Some({}1{})", "(".repeat(70), ")".repeat(70))).unwrap_err();
        assert!(err.message.contains("nested"), "{}", err.message);
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_invisible_characters_are_named() {
        let Value::Struct { fields, .. } = value("\u{feff}(a: 1)") else {
            panic!("expected a struct")
        };
        assert_eq!(fields[0].name.name, "a");
        assert_eq!(
            fields[0].name.span,
            4..5,
            "spans count the mark's three bytes"
        );
        let err = parse("(a: \u{200b}1)").unwrap_err();
        assert!(err.message.contains("U+200B"), "{}", err.message);
        let err = parse("(a: 1)\u{feff}").unwrap_err();
        assert!(err.message.contains("end of the file"), "{}", err.message);
        let err = parse("[1, \u{feff}]").unwrap_err();
        assert!(err.message.contains("byte-order mark"), "{}", err.message);
    }

    #[test]
    fn header_attributes_are_skipped() {
        assert_eq!(value("#![enable(implicit_some)]\n5"), Value::Int(5));
    }
}
