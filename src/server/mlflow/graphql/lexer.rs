//! The GraphQL lexer: punctuators, names, numbers, strings (with
//! escapes and surrogate pairs) and block strings, skipping whitespace,
//! commas, comments and a byte-order mark (the October 2021
//! specification's lexical grammar).

use super::document::SyntaxError;

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    Punct(char),
    Spread,
    Name(String),
    Int(i64),
    Float(f64),
    String(String),
    End,
}

/// Reads tokens from a document.
pub(super) struct Lexer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `text`.
    pub(super) fn new(text: &'a str) -> Self {
        Lexer {
            text,
            bytes: text.as_bytes(),
            offset: 0,
        }
    }

    fn error<T>(&self, offset: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            message: message.into(),
            offset,
        })
    }

    fn skip_ignored(&mut self) {
        while self.offset < self.bytes.len() {
            match self.bytes[self.offset] {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => self.offset += 1,
                b'#' => {
                    while self.offset < self.bytes.len()
                        && !matches!(self.bytes[self.offset], b'\n' | b'\r')
                    {
                        self.offset += 1;
                    }
                }
                0xEF if self.text[self.offset..].starts_with('\u{feff}') => self.offset += 3,
                _ => break,
            }
        }
    }

    /// The next token and the offset it starts at.
    pub(super) fn next(&mut self) -> Result<(Token, usize), SyntaxError> {
        self.skip_ignored();
        let start = self.offset;
        let Some(&byte) = self.bytes.get(start) else {
            return Ok((Token::End, start));
        };
        let token = match byte {
            b'!' | b'$' | b'&' | b'(' | b')' | b':' | b'=' | b'@' | b'[' | b']' | b'{' | b'|'
            | b'}' => {
                self.offset += 1;
                Token::Punct(byte as char)
            }
            b'.' => {
                if self.text[start..].starts_with("...") {
                    self.offset += 3;
                    Token::Spread
                } else {
                    return self.error(start, "Unexpected \".\"");
                }
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                while self.offset < self.bytes.len()
                    && matches!(self.bytes[self.offset], b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9')
                {
                    self.offset += 1;
                }
                Token::Name(self.text[start..self.offset].to_string())
            }
            b'-' | b'0'..=b'9' => self.number(start)?,
            b'"' => {
                if self.text[start..].starts_with("\"\"\"") {
                    self.block_string(start)?
                } else {
                    self.string(start)?
                }
            }
            _ => {
                let character = self.text[start..].chars().next().unwrap_or('?');
                return self.error(start, format!("Unexpected character {character:?}"));
            }
        };
        Ok((token, start))
    }

    fn number(&mut self, start: usize) -> Result<Token, SyntaxError> {
        let digits = |lexer: &mut Lexer| {
            let from = lexer.offset;
            while lexer.offset < lexer.bytes.len() && lexer.bytes[lexer.offset].is_ascii_digit() {
                lexer.offset += 1;
            }
            lexer.offset > from
        };
        if self.bytes[self.offset] == b'-' {
            self.offset += 1;
        }
        if !digits(self) {
            return self.error(start, "Invalid number: expected a digit");
        }
        let mut float = false;
        if self.bytes.get(self.offset) == Some(&b'.') {
            self.offset += 1;
            float = true;
            if !digits(self) {
                return self.error(start, "Invalid number: expected a digit after \".\"");
            }
        }
        if matches!(self.bytes.get(self.offset), Some(b'e' | b'E')) {
            self.offset += 1;
            float = true;
            if matches!(self.bytes.get(self.offset), Some(b'+' | b'-')) {
                self.offset += 1;
            }
            if !digits(self) {
                return self.error(start, "Invalid number: expected an exponent");
            }
        }
        if matches!(
            self.bytes.get(self.offset),
            Some(b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'.')
        ) {
            return self.error(self.offset, "Invalid number: unexpected character after it");
        }
        let text = &self.text[start..self.offset];
        if float {
            text.parse()
                .map(Token::Float)
                .or_else(|_| self.error(start, format!("Invalid number {text}")))
        } else {
            text.parse()
                .map(Token::Int)
                .or_else(|_| self.error(start, format!("Integer {text} is out of range")))
        }
    }

    fn string(&mut self, start: usize) -> Result<Token, SyntaxError> {
        self.offset += 1;
        let mut value = String::new();
        loop {
            let Some(character) = self.text[self.offset..].chars().next() else {
                return self.error(start, "Unterminated string");
            };
            self.offset += character.len_utf8();
            match character {
                '"' => return Ok(Token::String(value)),
                '\n' | '\r' => return self.error(start, "Unterminated string"),
                '\\' => {
                    let Some(escaped) = self.text[self.offset..].chars().next() else {
                        return self.error(start, "Unterminated string");
                    };
                    self.offset += escaped.len_utf8();
                    match escaped {
                        '"' => value.push('"'),
                        '\\' => value.push('\\'),
                        '/' => value.push('/'),
                        'b' => value.push('\u{8}'),
                        'f' => value.push('\u{c}'),
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        'u' => value.push(self.unicode_escape(start)?),
                        other => {
                            return self.error(self.offset, format!("Invalid escape \\{other}"));
                        }
                    }
                }
                other => value.push(other),
            }
        }
    }

    /// The code point of `\uXXXX` (a surrogate pair is two escapes).
    fn unicode_escape(&mut self, start: usize) -> Result<char, SyntaxError> {
        let hex4 = |lexer: &mut Lexer| -> Result<u32, SyntaxError> {
            let digits = lexer.text.get(lexer.offset..lexer.offset + 4).unwrap_or("");
            let code = u32::from_str_radix(digits, 16)
                .or_else(|_| lexer.error(lexer.offset, "Invalid \\u escape"))?;
            lexer.offset += 4;
            Ok(code)
        };
        let high = hex4(self)?;
        if (0xD800..0xDC00).contains(&high) && self.text[self.offset..].starts_with("\\u") {
            self.offset += 2;
            let low = hex4(self)?;
            if (0xDC00..0xE000).contains(&low) {
                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                return char::from_u32(code)
                    .map_or_else(|| self.error(start, "Invalid surrogate pair"), Ok);
            }
            return self.error(start, "Invalid surrogate pair");
        }
        char::from_u32(high).map_or_else(|| self.error(start, "Invalid \\u escape"), Ok)
    }

    fn block_string(&mut self, start: usize) -> Result<Token, SyntaxError> {
        self.offset += 3;
        let mut raw = String::new();
        loop {
            let rest = &self.text[self.offset..];
            if rest.starts_with("\"\"\"") {
                self.offset += 3;
                return Ok(Token::String(block_string_value(&raw)));
            }
            if rest.starts_with("\\\"\"\"") {
                raw.push_str("\"\"\"");
                self.offset += 4;
                continue;
            }
            let Some(character) = rest.chars().next() else {
                return self.error(start, "Unterminated block string");
            };
            raw.push(character);
            self.offset += character.len_utf8();
        }
    }
}

/// The value of a block string: common indentation and blank first and
/// last lines removed (the specification's `BlockStringValue`).
fn block_string_value(raw: &str) -> String {
    let lines: Vec<&str> = raw
        .split(['\n'])
        .map(|line| line.trim_end_matches('\r'))
        .collect();
    let indent = lines
        .iter()
        .skip(1)
        .filter_map(|line| {
            let trimmed = line.trim_start_matches([' ', '\t']);
            (!trimmed.is_empty()).then(|| line.len() - trimmed.len())
        })
        .min()
        .unwrap_or(0);
    let mut out: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            if index == 0 {
                line.to_string()
            } else {
                line.get(indent..).unwrap_or("").to_string()
            }
        })
        .collect();
    while out.first().is_some_and(|line| line.trim().is_empty()) {
        out.remove(0);
    }
    while out.last().is_some_and(|line| line.trim().is_empty()) {
        out.pop();
    }
    out.join("\n")
}
