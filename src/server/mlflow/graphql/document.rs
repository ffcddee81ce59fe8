//! GraphQL executable documents: the syntax tree and a recursive-descent
//! parser (over [`super::lexer`]) for operations (query, mutation), selection sets, fields with aliases,
//! arguments and directives, fragments (named and inline) and variables,
//! as the October 2021 specification writes them. Type-system definitions
//! are refused. Nesting is bounded so a hostile document cannot exhaust
//! the stack.

use std::collections::HashMap;

use super::lexer::{Lexer, Token};

/// Deepest nesting of selection sets and values accepted.
pub const MAX_DEPTH: usize = 32;

/// Why a document cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Syntax Error: {message} (at character {offset})")]
pub struct SyntaxError {
    /// What is wrong.
    pub message: String,
    /// Byte offset in the document.
    pub offset: usize,
}

/// A parsed document: its operations and named fragments.
#[derive(Debug, Default)]
pub struct Document {
    /// Operations in document order.
    pub operations: Vec<Operation>,
    /// Fragment definitions by name.
    pub fragments: HashMap<String, Fragment>,
}

/// `query` or `mutation` (subscriptions are refused when executed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    /// A read.
    Query,
    /// A write (MLflow also exposes some reads as mutations).
    Mutation,
    /// A subscription.
    Subscription,
}

/// One operation definition.
#[derive(Debug)]
pub struct Operation {
    /// Query or mutation.
    pub kind: OperationKind,
    /// Its name, if any.
    pub name: Option<String>,
    /// Declared variables with their default values.
    pub variables: Vec<VariableDefinition>,
    /// The root selection set.
    pub selection: Vec<Selection>,
}

/// A declared variable.
#[derive(Debug)]
pub struct VariableDefinition {
    /// The name, without `$`.
    pub name: String,
    /// Whether the type ends with `!`.
    pub required: bool,
    /// The default value, if any.
    pub default: Option<Value>,
}

/// A named fragment.
#[derive(Debug)]
pub struct Fragment {
    /// The type it applies to.
    pub type_condition: String,
    /// Its selections.
    pub selection: Vec<Selection>,
}

/// One selection of a selection set.
#[derive(Debug)]
pub enum Selection {
    /// A field.
    Field(Field),
    /// `...Name`.
    FragmentSpread {
        /// The fragment's name.
        name: String,
        /// `@skip` / `@include` and others.
        directives: Vec<Directive>,
    },
    /// `... on Type { ... }`.
    InlineFragment {
        /// The type it applies to, if given.
        type_condition: Option<String>,
        /// `@skip` / `@include` and others.
        directives: Vec<Directive>,
        /// Its selections.
        selection: Vec<Selection>,
    },
}

/// A field selection.
#[derive(Debug)]
pub struct Field {
    /// The response key, when it differs from the name.
    pub alias: Option<String>,
    /// The field's name.
    pub name: String,
    /// Arguments in order.
    pub arguments: Vec<(String, Value)>,
    /// `@skip` / `@include` and others.
    pub directives: Vec<Directive>,
    /// The sub-selection (empty for a leaf).
    pub selection: Vec<Selection>,
}

impl Field {
    /// The key this field has in the response.
    pub fn response_key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

/// A directive (`@name(args)`).
#[derive(Debug)]
pub struct Directive {
    /// Its name, without `@`.
    pub name: String,
    /// Its arguments.
    pub arguments: Vec<(String, Value)>,
}

/// An input value as written in the document.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `$name`.
    Variable(String),
    /// An integer literal.
    Int(i64),
    /// A float literal.
    Float(f64),
    /// A string literal (escapes resolved).
    String(String),
    /// `true` / `false`.
    Boolean(bool),
    /// `null`.
    Null,
    /// An enum value (a bare name).
    Enum(String),
    /// `[...]`.
    List(Vec<Value>),
    /// `{name: value, ...}`.
    Object(Vec<(String, Value)>),
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    token: Token,
    offset: usize,
    depth: usize,
}

/// Parses an executable document.
pub fn parse(text: &str) -> Result<Document, SyntaxError> {
    let mut lexer = Lexer::new(text);
    let (token, offset) = lexer.next()?;
    let mut parser = Parser {
        lexer,
        token,
        offset,
        depth: 0,
    };
    parser.document()
}

impl Parser<'_> {
    fn advance(&mut self) -> Result<Token, SyntaxError> {
        let (next, offset) = self.lexer.next()?;
        self.offset = offset;
        Ok(std::mem::replace(&mut self.token, next))
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            message: message.into(),
            offset: self.offset,
        })
    }

    fn unexpected<T>(&self, expected: &str) -> Result<T, SyntaxError> {
        let found = match &self.token {
            Token::Punct(c) => format!("\"{c}\""),
            Token::Spread => "\"...\"".to_string(),
            Token::Name(name) => format!("Name \"{name}\""),
            Token::Int(value) => format!("Int \"{value}\""),
            Token::Float(value) => format!("Float \"{value}\""),
            Token::String(value) => format!("String \"{value}\""),
            Token::End => "<EOF>".to_string(),
        };
        self.error(format!("Expected {expected}, found {found}"))
    }

    fn is_punct(&self, c: char) -> bool {
        self.token == Token::Punct(c)
    }

    fn expect_punct(&mut self, c: char) -> Result<(), SyntaxError> {
        if self.is_punct(c) {
            self.advance()?;
            Ok(())
        } else {
            self.unexpected(&format!("\"{c}\""))
        }
    }

    fn name(&mut self) -> Result<String, SyntaxError> {
        match &self.token {
            Token::Name(_) => match self.advance()? {
                Token::Name(name) => Ok(name),
                _ => self.unexpected("Name"),
            },
            _ => self.unexpected("Name"),
        }
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error(format!("the document nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn document(&mut self) -> Result<Document, SyntaxError> {
        let mut document = Document::default();
        if self.token == Token::End {
            return self.error("Unexpected <EOF>: the document holds no operation");
        }
        while self.token != Token::End {
            match &self.token {
                Token::Punct('{') => {
                    let selection = self.selection_set()?;
                    document.operations.push(Operation {
                        kind: OperationKind::Query,
                        name: None,
                        variables: Vec::new(),
                        selection,
                    });
                }
                Token::Name(keyword) => match keyword.as_str() {
                    "query" | "mutation" | "subscription" => {
                        let operation = self.operation()?;
                        document.operations.push(operation);
                    }
                    "fragment" => {
                        let offset = self.offset;
                        let (name, fragment) = self.fragment()?;
                        if document.fragments.insert(name.clone(), fragment).is_some() {
                            return Err(SyntaxError {
                                message: format!("There can be only one fragment named \"{name}\""),
                                offset,
                            });
                        }
                    }
                    other => {
                        return self.error(format!(
                            "Unexpected Name \"{other}\": only operations and fragments may be \
                             sent to the server"
                        ));
                    }
                },
                _ => return self.unexpected("an operation or a fragment"),
            }
        }
        Ok(document)
    }

    fn operation(&mut self) -> Result<Operation, SyntaxError> {
        let kind = match self.name()?.as_str() {
            "query" => OperationKind::Query,
            "mutation" => OperationKind::Mutation,
            _ => OperationKind::Subscription,
        };
        let name = match self.token {
            Token::Name(_) => Some(self.name()?),
            _ => None,
        };
        let mut variables = Vec::new();
        if self.is_punct('(') {
            self.advance()?;
            while !self.is_punct(')') {
                self.expect_punct('$')?;
                let name = self.name()?;
                self.expect_punct(':')?;
                let required = self.type_reference()?;
                let default = if self.is_punct('=') {
                    self.advance()?;
                    Some(self.value(true)?)
                } else {
                    None
                };
                self.directives(true)?;
                variables.push(VariableDefinition {
                    name,
                    required,
                    default,
                });
            }
            self.advance()?;
        }
        self.directives(false)?;
        let selection = self.selection_set()?;
        Ok(Operation {
            kind,
            name,
            variables,
            selection,
        })
    }

    /// Parses a type; returns whether it is non-null.
    fn type_reference(&mut self) -> Result<bool, SyntaxError> {
        self.enter()?;
        if self.is_punct('[') {
            self.advance()?;
            self.type_reference()?;
            self.expect_punct(']')?;
        } else {
            self.name()?;
        }
        self.depth -= 1;
        if self.is_punct('!') {
            self.advance()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn fragment(&mut self) -> Result<(String, Fragment), SyntaxError> {
        self.name()?; // "fragment"
        let name = self.name()?;
        if name == "on" {
            return self.error("A fragment cannot be named \"on\"");
        }
        match self.name()?.as_str() {
            "on" => {}
            _ => return self.unexpected("\"on\""),
        }
        let type_condition = self.name()?;
        self.directives(false)?;
        let selection = self.selection_set()?;
        Ok((
            name,
            Fragment {
                type_condition,
                selection,
            },
        ))
    }

    fn selection_set(&mut self) -> Result<Vec<Selection>, SyntaxError> {
        self.enter()?;
        self.expect_punct('{')?;
        let mut selections = Vec::new();
        while !self.is_punct('}') {
            selections.push(self.selection()?);
        }
        if selections.is_empty() {
            return self.unexpected("a selection");
        }
        self.advance()?;
        self.depth -= 1;
        Ok(selections)
    }

    fn selection(&mut self) -> Result<Selection, SyntaxError> {
        if self.token == Token::Spread {
            self.advance()?;
            if let Token::Name(name) = &self.token
                && name != "on"
            {
                let name = self.name()?;
                let directives = self.directives(false)?;
                return Ok(Selection::FragmentSpread { name, directives });
            }
            let type_condition = if self.token == Token::Name("on".to_string()) {
                self.advance()?;
                Some(self.name()?)
            } else {
                None
            };
            let directives = self.directives(false)?;
            let selection = self.selection_set()?;
            return Ok(Selection::InlineFragment {
                type_condition,
                directives,
                selection,
            });
        }
        let first = self.name()?;
        let (alias, name) = if self.is_punct(':') {
            self.advance()?;
            (Some(first), self.name()?)
        } else {
            (None, first)
        };
        let arguments = self.arguments(false)?;
        let directives = self.directives(false)?;
        let selection = if self.is_punct('{') {
            self.selection_set()?
        } else {
            Vec::new()
        };
        Ok(Selection::Field(Field {
            alias,
            name,
            arguments,
            directives,
            selection,
        }))
    }

    fn arguments(&mut self, constant: bool) -> Result<Vec<(String, Value)>, SyntaxError> {
        let mut arguments = Vec::new();
        if !self.is_punct('(') {
            return Ok(arguments);
        }
        self.advance()?;
        while !self.is_punct(')') {
            let name = self.name()?;
            self.expect_punct(':')?;
            arguments.push((name, self.value(constant)?));
        }
        if arguments.is_empty() {
            return self.unexpected("an argument");
        }
        self.advance()?;
        Ok(arguments)
    }

    fn directives(&mut self, constant: bool) -> Result<Vec<Directive>, SyntaxError> {
        let mut directives = Vec::new();
        while self.is_punct('@') {
            self.advance()?;
            let name = self.name()?;
            let arguments = self.arguments(constant)?;
            directives.push(Directive { name, arguments });
        }
        Ok(directives)
    }

    fn value(&mut self, constant: bool) -> Result<Value, SyntaxError> {
        self.enter()?;
        let value = match self.token.clone() {
            Token::Punct('$') if !constant => {
                self.advance()?;
                Value::Variable(self.name()?)
            }
            Token::Punct('[') => {
                self.advance()?;
                let mut items = Vec::new();
                while !self.is_punct(']') {
                    items.push(self.value(constant)?);
                }
                self.advance()?;
                Value::List(items)
            }
            Token::Punct('{') => {
                self.advance()?;
                let mut fields = Vec::new();
                while !self.is_punct('}') {
                    let name = self.name()?;
                    self.expect_punct(':')?;
                    fields.push((name, self.value(constant)?));
                }
                self.advance()?;
                Value::Object(fields)
            }
            Token::Int(value) => {
                self.advance()?;
                Value::Int(value)
            }
            Token::Float(value) => {
                self.advance()?;
                Value::Float(value)
            }
            Token::String(value) => {
                self.advance()?;
                Value::String(value)
            }
            Token::Name(name) => {
                self.advance()?;
                match name.as_str() {
                    "true" => Value::Boolean(true),
                    "false" => Value::Boolean(false),
                    "null" => Value::Null,
                    _ => Value::Enum(name),
                }
            }
            _ => return self.unexpected("a value"),
        };
        self.depth -= 1;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_RUN: &str = r#"
        query GetRun($data: MlflowGetRunInput!) @component(name: "MLflow.ExperimentRunTracking") {
          mlflowGetRun(input: $data) {
            apiError { helpUrl code message }
            run { info { runName status } data { metrics { key value } } }
            __typename
          }
        }"#;

    fn field(selection: &Selection) -> &Field {
        match selection {
            Selection::Field(field) => field,
            other => panic!("not a field: {other:?}"),
        }
    }

    #[test]
    fn the_mlflow_ui_get_run_query_parses() {
        let document = parse(GET_RUN).unwrap();
        let operation = &document.operations[0];
        assert_eq!(operation.kind, OperationKind::Query);
        assert_eq!(operation.name.as_deref(), Some("GetRun"));
        assert_eq!(operation.variables[0].name, "data");
        assert!(operation.variables[0].required);
        let root = field(&operation.selection[0]);
        assert_eq!(root.name, "mlflowGetRun");
        assert_eq!(
            root.arguments,
            vec![("input".to_string(), Value::Variable("data".into()))]
        );
        let names: Vec<&str> = root
            .selection
            .iter()
            .map(|s| field(s).name.as_str())
            .collect();
        assert_eq!(names, ["apiError", "run", "__typename"]);
    }

    #[test]
    fn aliases_fragments_literals_and_comments() {
        let document = parse(
            r#"# a comment
            { a: test(inputString: "x\"\u00e9\uD83D\uDE00", n: -12, f: 1.5e2, b: true, z: null,
                      e: ALL, l: [1, 2], o: {k: "v"}) { ...F ... on T @skip(if: false) { output } } }
            fragment F on T { output }"#,
        )
        .unwrap();
        let root = field(&document.operations[0].selection[0]);
        assert_eq!(root.response_key(), "a");
        assert_eq!(
            root.arguments[0].1,
            Value::String("x\"\u{e9}\u{1F600}".into())
        );
        assert_eq!(root.arguments[1].1, Value::Int(-12));
        assert_eq!(root.arguments[2].1, Value::Float(150.0));
        assert_eq!(root.arguments[5].1, Value::Enum("ALL".into()));
        assert!(matches!(
            root.selection[0],
            Selection::FragmentSpread { .. }
        ));
        assert!(matches!(
            &root.selection[1],
            Selection::InlineFragment { type_condition: Some(t), directives, .. }
                if t == "T" && directives[0].name == "skip"
        ));
        assert_eq!(document.fragments["F"].type_condition, "T");
    }

    #[test]
    fn block_strings_lose_their_common_indentation() {
        let document = parse("{ test(inputString: \"\"\"\n    a\n      b\n  \"\"\") }").unwrap();
        let root = field(&document.operations[0].selection[0]);
        assert_eq!(root.arguments[0].1, Value::String("a\n  b".into()));
    }

    #[test]
    fn broken_documents_are_errors_not_panics() {
        for text in [
            "",
            "{",
            "{ a(",
            "{ a(b: ) }",
            "{ a(b: \"unterminated) }",
            "{ a(b: \"\\u12\") }",
            "{ a(b: 1.) }",
            "{ a(b: 99999999999999999999) }",
            "type Query { a: Int }",
            "query { }",
            "{ ... }",
            "fragment on on T { a }",
            "{ a } fragment F on T { a } fragment F on T { b }",
            "\u{0}",
            "{ a. }",
        ] {
            assert!(parse(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}{}", "{ a ".repeat(100), "}".repeat(100));
        let error = parse(&deep).unwrap_err();
        assert!(error.message.contains("deeper"), "{error}");
        let deep_value = format!("{{ a(b: {}1{}) }}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&deep_value).is_err());
    }
}
