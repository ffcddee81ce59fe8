//! MLflow's search filter grammar: a conjunction (`AND`) of comparisons
//! such as `metrics.acc > 0.9`, `params.lr = '0.01'`,
//! `` tags.`my tag` LIKE '%x%' `` or `attributes.status IN ('FINISHED')`.
//!
//! The tokenizer and parser here produce [`RawComparison`]s; what an
//! identifier means (a run field, an experiment field) is decided by the
//! caller (`search::runs`, `search::experiments`).

use std::collections::HashMap;

use super::SearchError;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparator {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `LIKE` (case-sensitive SQL pattern)
    Like,
    /// `ILIKE` (case-insensitive SQL pattern)
    ILike,
    /// `IN (...)`
    In,
    /// `NOT IN (...)`
    NotIn,
    /// `IS NULL`
    IsNull,
    /// `IS NOT NULL`
    IsNotNull,
}

impl Comparator {
    /// The operator as written in a filter.
    pub fn as_str(self) -> &'static str {
        match self {
            Comparator::Eq => "=",
            Comparator::Ne => "!=",
            Comparator::Lt => "<",
            Comparator::Le => "<=",
            Comparator::Gt => ">",
            Comparator::Ge => ">=",
            Comparator::Like => "LIKE",
            Comparator::ILike => "ILIKE",
            Comparator::In => "IN",
            Comparator::NotIn => "NOT IN",
            Comparator::IsNull => "IS NULL",
            Comparator::IsNotNull => "IS NOT NULL",
        }
    }

    /// Whether the operator applies to numbers.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Comparator::Eq
                | Comparator::Ne
                | Comparator::Lt
                | Comparator::Le
                | Comparator::Gt
                | Comparator::Ge
        )
    }

    /// Whether the operator applies to strings.
    pub fn is_textual(self) -> bool {
        matches!(
            self,
            Comparator::Eq
                | Comparator::Ne
                | Comparator::Like
                | Comparator::ILike
                | Comparator::In
                | Comparator::NotIn
        )
    }
}

/// The right-hand side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// A number (unquoted).
    Number(f64),
    /// A quoted string.
    Text(String),
    /// A parenthesised list of quoted strings (for `IN`).
    List(Vec<String>),
    /// Nothing (for `IS NULL` / `IS NOT NULL`).
    Null,
}

/// An identifier as written: its prefix (`metrics`, `params`, `tags`,
/// `attributes`, `dataset`, or none) and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identifier {
    /// The part before the first dot, lower-cased (`None` when there is no dot).
    pub prefix: Option<String>,
    /// The key (unquoted).
    pub key: String,
}

/// One `identifier comparator value` term.
#[derive(Clone, Debug, PartialEq)]
pub struct RawComparison {
    /// What is compared.
    pub identifier: Identifier,
    /// How.
    pub comparator: Comparator,
    /// With what.
    pub value: Literal,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    /// A bare word: identifier, keyword or number.
    Word(String),
    /// A single- or double-quoted string.
    Quoted(String),
    /// A back-quoted name.
    BackQuoted(String),
    /// A comparison operator.
    Operator(&'static str),
    Open,
    Close,
    Comma,
}

fn is_word_char(character: char) -> bool {
    character.is_alphanumeric() || matches!(character, '_' | '.' | '-' | '+' | ':' | '/')
}

fn tokenize(text: &str) -> Result<Vec<Token>, SearchError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(position, character)) = chars.peek() {
        match character {
            _ if character.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
            }
            '\'' | '"' | '`' => {
                chars.next();
                let mut content = String::new();
                let mut closed = false;
                while let Some((_, next)) = chars.next() {
                    if next == character {
                        // A doubled quote inside a string is one quote (SQL).
                        if chars.peek().is_some_and(|&(_, after)| after == character) {
                            chars.next();
                            content.push(character);
                            continue;
                        }
                        closed = true;
                        break;
                    }
                    content.push(next);
                }
                if !closed {
                    return Err(SearchError::InvalidFilter(format!(
                        "unterminated quote starting at character {position}"
                    )));
                }
                tokens.push(if character == '`' {
                    Token::BackQuoted(content)
                } else {
                    Token::Quoted(content)
                });
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let followed_by_equals = chars.peek().is_some_and(|&(_, next)| next == '=');
                let operator = match (character, followed_by_equals) {
                    ('=', true) => "==",
                    ('=', false) => "=",
                    ('!', true) => "!=",
                    ('<', true) => "<=",
                    ('>', true) => ">=",
                    ('<', false) if chars.peek().is_some_and(|&(_, next)| next == '>') => {
                        chars.next();
                        "!="
                    }
                    ('<', false) => "<",
                    ('>', false) => ">",
                    _ => {
                        return Err(SearchError::InvalidFilter(format!(
                            "unexpected '!' at character {position}"
                        )));
                    }
                };
                if followed_by_equals {
                    chars.next();
                }
                tokens.push(Token::Operator(if operator == "==" {
                    "="
                } else {
                    operator
                }));
            }
            _ if is_word_char(character) => {
                let mut word = String::new();
                while let Some(&(_, next)) = chars.peek() {
                    if !is_word_char(next) {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
            other => {
                return Err(SearchError::InvalidFilter(format!(
                    "unexpected character '{other}' at position {position}"
                )));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(word)) if word.eq_ignore_ascii_case(keyword))
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), SearchError> {
        if self.peek_keyword(keyword) {
            self.position += 1;
            Ok(())
        } else {
            Err(SearchError::InvalidFilter(format!(
                "expected '{keyword}' {}",
                self.here()
            )))
        }
    }

    fn here(&self) -> String {
        match self.peek() {
            Some(token) => format!("at {}", describe(token)),
            None => "at the end of the filter".to_string(),
        }
    }

    fn identifier(&mut self) -> Result<Identifier, SearchError> {
        match self.next() {
            Some(Token::Word(word)) => {
                if let Some((prefix, key)) = word.split_once('.') {
                    let prefix = prefix.to_ascii_lowercase();
                    if key.is_empty() {
                        // `metrics."my key"` or `` metrics.`my key` ``.
                        return match self.next() {
                            Some(Token::Quoted(key) | Token::BackQuoted(key)) => Ok(Identifier {
                                prefix: Some(prefix),
                                key,
                            }),
                            _ => Err(SearchError::InvalidFilter(format!(
                                "expected a key after '{word}'"
                            ))),
                        };
                    }
                    Ok(Identifier {
                        prefix: Some(prefix),
                        key: key.to_string(),
                    })
                } else {
                    Ok(Identifier {
                        prefix: None,
                        key: word,
                    })
                }
            }
            Some(Token::BackQuoted(quoted)) => {
                // `` `params`.lr `` or `` `params`.`my key` ``: a quoted prefix.
                match self.peek() {
                    Some(Token::Word(word)) if word.starts_with('.') => {
                        let key = word[1..].to_string();
                        self.position += 1;
                        let key = if key.is_empty() {
                            match self.next() {
                                Some(Token::Quoted(key) | Token::BackQuoted(key)) => key,
                                _ => {
                                    return Err(SearchError::InvalidFilter(format!(
                                        "expected a key after `{quoted}`."
                                    )));
                                }
                            }
                        } else {
                            key
                        };
                        Ok(Identifier {
                            prefix: Some(quoted.to_ascii_lowercase()),
                            key,
                        })
                    }
                    _ => Ok(Identifier {
                        prefix: None,
                        key: quoted,
                    }),
                }
            }
            Some(token) => Err(SearchError::InvalidFilter(format!(
                "expected an identifier such as metrics.<key>, params.<key>, tags.<key> or \
                 attributes.<name>, found {}",
                describe(&token)
            ))),
            None => Err(SearchError::InvalidFilter(
                "expected an identifier at the end of the filter".to_string(),
            )),
        }
    }

    fn comparator(&mut self) -> Result<Comparator, SearchError> {
        match self.next() {
            Some(Token::Operator(operator)) => Ok(match operator {
                "=" => Comparator::Eq,
                "!=" => Comparator::Ne,
                "<" => Comparator::Lt,
                "<=" => Comparator::Le,
                ">" => Comparator::Gt,
                _ => Comparator::Ge,
            }),
            Some(Token::Word(word)) => match word.to_ascii_uppercase().as_str() {
                "LIKE" => Ok(Comparator::Like),
                "ILIKE" => Ok(Comparator::ILike),
                "IN" => Ok(Comparator::In),
                "NOT" => {
                    self.expect_keyword("IN")?;
                    Ok(Comparator::NotIn)
                }
                "IS" => {
                    if self.peek_keyword("NOT") {
                        self.position += 1;
                        self.expect_keyword("NULL")?;
                        Ok(Comparator::IsNotNull)
                    } else {
                        self.expect_keyword("NULL")?;
                        Ok(Comparator::IsNull)
                    }
                }
                _ => Err(SearchError::InvalidFilter(format!(
                    "'{word}' is not a comparator; use one of =, !=, <, <=, >, >=, LIKE, ILIKE, \
                     IN, NOT IN"
                ))),
            },
            Some(token) => Err(SearchError::InvalidFilter(format!(
                "expected a comparator, found {}",
                describe(&token)
            ))),
            None => Err(SearchError::InvalidFilter(
                "expected a comparator at the end of the filter".to_string(),
            )),
        }
    }

    fn value(&mut self, comparator: Comparator) -> Result<Literal, SearchError> {
        match comparator {
            Comparator::IsNull | Comparator::IsNotNull => return Ok(Literal::Null),
            Comparator::In | Comparator::NotIn => return self.list(),
            _ => {}
        }
        match self.next() {
            Some(Token::Quoted(text)) => Ok(Literal::Text(text)),
            Some(Token::Word(word)) => word.parse::<f64>().map(Literal::Number).map_err(|_| {
                SearchError::InvalidFilter(format!(
                    "expected a number or a quoted string, found '{word}' (strings must be \
                     quoted with ' or \")"
                ))
            }),
            Some(token) => Err(SearchError::InvalidFilter(format!(
                "expected a value, found {}",
                describe(&token)
            ))),
            None => Err(SearchError::InvalidFilter(
                "expected a value at the end of the filter".to_string(),
            )),
        }
    }

    fn list(&mut self) -> Result<Literal, SearchError> {
        if self.next() != Some(Token::Open) {
            return Err(SearchError::InvalidFilter(
                "IN and NOT IN take a parenthesised list of quoted strings, such as ('a', 'b')"
                    .to_string(),
            ));
        }
        let mut items = Vec::new();
        loop {
            match self.next() {
                Some(Token::Quoted(text)) => items.push(text),
                Some(Token::Close) if items.is_empty() => {
                    return Err(SearchError::InvalidFilter(
                        "the list after IN must not be empty".to_string(),
                    ));
                }
                _ => {
                    return Err(SearchError::InvalidFilter(
                        "the list after IN must hold quoted strings, such as ('a', 'b')"
                            .to_string(),
                    ));
                }
            }
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => break,
                _ => {
                    return Err(SearchError::InvalidFilter(
                        "expected ',' or ')' in the list after IN".to_string(),
                    ));
                }
            }
        }
        Ok(Literal::List(items))
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Word(word) => format!("'{word}'"),
        Token::Quoted(text) => format!("the string '{text}'"),
        Token::BackQuoted(text) => format!("`{text}`"),
        Token::Operator(operator) => format!("'{operator}'"),
        Token::Open => "'('".to_string(),
        Token::Close => "')'".to_string(),
        Token::Comma => "','".to_string(),
    }
}

/// Parses a filter into its comparisons (joined by `AND`). An empty or
/// blank filter is no comparison at all.
pub fn parse_filter(text: &str) -> Result<Vec<RawComparison>, SearchError> {
    if text.len() > MAX_FILTER_BYTES {
        return Err(SearchError::InvalidFilter(format!(
            "the filter is {} bytes long, more than the limit of {MAX_FILTER_BYTES}",
            text.len()
        )));
    }
    let mut parser = Parser {
        tokens: tokenize(text)?,
        position: 0,
    };
    let mut comparisons = Vec::new();
    if parser.tokens.is_empty() {
        return Ok(comparisons);
    }
    loop {
        let identifier = parser.identifier()?;
        let comparator = parser.comparator()?;
        let value = parser.value(comparator)?;
        if let (Comparator::Like | Comparator::ILike, Literal::Text(pattern)) = (comparator, &value)
            && pattern.chars().count() > MAX_LIKE_PATTERN_CHARS
        {
            return Err(SearchError::InvalidFilter(format!(
                "a {} pattern may be at most {MAX_LIKE_PATTERN_CHARS} characters long",
                comparator.as_str()
            )));
        }
        comparisons.push(RawComparison {
            identifier,
            comparator,
            value,
        });
        match parser.next() {
            None => return Ok(comparisons),
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("AND") => {}
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("OR") => {
                return Err(SearchError::InvalidFilter(
                    "'OR' is not supported; only 'AND' joins comparisons".to_string(),
                ));
            }
            Some(token) => {
                return Err(SearchError::InvalidFilter(format!(
                    "expected 'AND' or the end of the filter, found {}",
                    describe(&token)
                )));
            }
        }
    }
}

/// One `order_by` item: an identifier and a direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawOrderBy {
    /// What to order by.
    pub identifier: Identifier,
    /// `ASC` (the default) or `DESC`.
    pub ascending: bool,
}

/// Parses one `order_by` clause such as `metrics.acc DESC`.
pub fn parse_order_by(text: &str) -> Result<RawOrderBy, SearchError> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        position: 0,
    };
    let invalid = || {
        SearchError::InvalidOrderBy(format!(
            "invalid order_by clause '{text}': expected '<identifier> [ASC|DESC]'"
        ))
    };
    let identifier = parser.identifier().map_err(|_| invalid())?;
    let ascending = match parser.next() {
        None => true,
        Some(Token::Word(word)) if word.eq_ignore_ascii_case("ASC") => true,
        Some(Token::Word(word)) if word.eq_ignore_ascii_case("DESC") => false,
        Some(_) => return Err(invalid()),
    };
    if parser.next().is_some() {
        return Err(invalid());
    }
    Ok(RawOrderBy {
        identifier,
        ascending,
    })
}

/// Longest filter text, in bytes.
pub const MAX_FILTER_BYTES: usize = 100_000;

/// Longest `LIKE` / `ILIKE` pattern, in characters (longer than any value
/// a run can hold).
pub const MAX_LIKE_PATTERN_CHARS: usize = 10_000;

/// SQL `LIKE` matching: `%` is any run of characters, `_` one character.
/// Patterns become regular expressions (the `regex` crate runs in time
/// linear in the text for a given pattern, with no backtracking), compiled
/// once per thread and pattern.
pub fn like_matches(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    thread_local! {
        static COMPILED: std::cell::RefCell<HashMap<(String, bool), Option<regex::Regex>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    COMPILED.with(|compiled| {
        let mut compiled = compiled.borrow_mut();
        if compiled.len() > 256 {
            compiled.clear();
        }
        let matcher = compiled
            .entry((pattern.to_string(), case_insensitive))
            .or_insert_with(|| like_regex(pattern, case_insensitive));
        match matcher {
            Some(regex) => regex.is_match(text),
            None => like_matches_by_scan(pattern, text, case_insensitive),
        }
    })
}

/// The anchored regular expression of a `LIKE` pattern (`None` when it
/// is too large to compile).
fn like_regex(pattern: &str, case_insensitive: bool) -> Option<regex::Regex> {
    let mut expression = String::with_capacity(pattern.len() * 2 + 8);
    expression.push_str(if case_insensitive { "(?is)^" } else { "(?s)^" });
    let mut literal = [0u8; 4];
    for character in pattern.chars() {
        match character {
            '%' => expression.push_str(".*"),
            '_' => expression.push('.'),
            other => expression.push_str(&regex::escape(other.encode_utf8(&mut literal))),
        }
    }
    expression.push('$');
    regex::RegexBuilder::new(&expression)
        .size_limit(16 << 20)
        .build()
        .ok()
}

/// Wildcard matching with backtracking to the last `%`, for patterns too
/// large for a regular expression.
fn like_matches_by_scan(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let fold = |value: &str| -> Vec<char> {
        if case_insensitive {
            value.to_lowercase().chars().collect()
        } else {
            value.chars().collect()
        }
    };
    let pattern = fold(pattern);
    let text = fold(text);
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '%' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&character| character == '%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(prefix: &str, key: &str) -> Identifier {
        Identifier {
            prefix: Some(prefix.to_string()),
            key: key.to_string(),
        }
    }

    #[test]
    fn parses_conjunctions_of_each_comparator_and_quoting() {
        let parsed = parse_filter(
            "metrics.acc > 0.9 and params.lr = '0.01' AND tags.`my tag` LIKE '%x%' \
             AND attributes.status IN ('FINISHED', \"FAILED\") AND metrics.\"a b\" <= -1e3 \
             AND tags.t NOT IN ('a') AND params.p ILIKE 'A%' AND tags.x IS NOT NULL \
             AND metrics.loss != 2 AND params.q == 'z'",
        )
        .unwrap();
        assert_eq!(parsed.len(), 10);
        assert_eq!(parsed[0].identifier, ident("metrics", "acc"));
        assert_eq!(parsed[0].comparator, Comparator::Gt);
        assert_eq!(parsed[0].value, Literal::Number(0.9));
        assert_eq!(parsed[1].value, Literal::Text("0.01".to_string()));
        assert_eq!(parsed[2].identifier, ident("tags", "my tag"));
        assert_eq!(parsed[2].comparator, Comparator::Like);
        assert_eq!(
            parsed[3].value,
            Literal::List(vec!["FINISHED".to_string(), "FAILED".to_string()])
        );
        assert_eq!(parsed[4].identifier, ident("metrics", "a b"));
        assert_eq!(parsed[4].value, Literal::Number(-1000.0));
        assert_eq!(parsed[5].comparator, Comparator::NotIn);
        assert_eq!(parsed[6].comparator, Comparator::ILike);
        assert_eq!(parsed[7].comparator, Comparator::IsNotNull);
        assert_eq!(parsed[8].comparator, Comparator::Ne);
        assert_eq!(parsed[9].comparator, Comparator::Eq);
    }

    #[test]
    fn keys_with_slashes_and_empty_filters() {
        let parsed = parse_filter("metrics.train/loss < 1").unwrap();
        assert_eq!(parsed[0].identifier, ident("metrics", "train/loss"));
        let parsed = parse_filter("`params`.opt = 'rms' AND `tags`.`a b` = 'c'").unwrap();
        assert_eq!(parsed[0].identifier, ident("params", "opt"));
        assert_eq!(parsed[1].identifier, ident("tags", "a b"));
        assert!(parse_filter("").unwrap().is_empty());
        assert!(parse_filter("   ").unwrap().is_empty());
    }

    #[test]
    fn refuses_malformed_filters() {
        for bad in [
            "metrics.acc >",
            "metrics.acc > 1 OR metrics.acc < 0",
            "params.lr = unquoted",
            "params.lr IN 'a'",
            "params.lr IN ()",
            "tags.x = 'open",
            "metrics.acc > 1 metrics.b < 2",
            "metrics.acc ~ 1",
            "(",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn order_by_clauses() {
        let order = parse_order_by("metrics.`val loss` DESC").unwrap();
        assert_eq!(order.identifier, ident("metrics", "val loss"));
        assert!(!order.ascending);
        assert!(parse_order_by("attributes.start_time").unwrap().ascending);
        assert!(parse_order_by("params.lr sideways").is_err());
        assert!(parse_order_by("").is_err());
    }

    #[test]
    fn like_patterns() {
        assert!(like_matches("%x%", "abxcd", false));
        assert!(like_matches("a_c", "abc", false));
        assert!(!like_matches("a_c", "abbc", false));
        assert!(like_matches("A%", "abc", true));
        assert!(!like_matches("A%", "abc", false));
        assert!(like_matches("%", "", false));
        assert!(like_matches("%b%c", "abxbc", false));
        assert!(!like_matches("abc", "abcd", false));
        // Regular-expression characters are literal; `.` is not a wildcard.
        assert!(like_matches("a.b(c)+", "a.b(c)+", false));
        assert!(!like_matches("a.b", "axb", false));
        assert!(like_matches("%\nx", "a\nb\nx", false));
        assert!(like_matches("ÉTÉ%", "été 2026", true));
        // The scan agrees with the expressions on these cases.
        for (pattern, text) in [
            ("%x%", "abxcd"),
            ("a_c", "abbc"),
            ("%b%c", "abxbc"),
            ("%", ""),
        ] {
            assert_eq!(
                like_matches_by_scan(pattern, text, false),
                like_matches(pattern, text, false),
                "{pattern} {text}"
            );
        }
        // An adversarial pattern on a long value stays fast (linear).
        let text = "a".repeat(8000);
        let pattern = format!("{}b", "%a".repeat(5000));
        assert!(!like_matches(&pattern, &text, false));
    }
}
