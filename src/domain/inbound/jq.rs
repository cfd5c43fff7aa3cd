//! `jq`: a channel we do not ship, mapped by the user's own jq program
//! (SPEC 10), run with jaq (`jaq-core`, `jaq-std`, `jaq-json`).
//!
//! The program is compiled once, when the source is validated
//! ([`JqProgram::compile`]): a program that does not parse or calls what
//! does not exist is refused then, naming `program` and the line and
//! column. At run time the payload is `.`, the URL's topic `$topic` (null
//! when the URL has none), the source's currency `$currency` (null when
//! unset) and its id `$source`. Each output is one SPEC 1 event; no output
//! (`empty`) means the topic is not mapped (acknowledged, nothing stored).
//!
//! Money never passes through floating point. jaq keeps a payload's
//! number as its literal text (`Num::Dec`) until arithmetic makes it an
//! `f64`: so in the decimal fields of an event (`payment.amount`,
//! `order.line_items[].unit_price`, `discount`, `tax_rate`,
//! `order.fees[].amount`, `tax_rate`, `order.payments[].amount`) a string,
//! an integer or an untouched number (negated or not) becomes the decimal
//! string SPEC 1 wants, read from that exact text; a number computed in
//! floating point is refused naming the field. Elsewhere a number must be
//! an integer (`version`, `quantity`): a fraction outside the decimal
//! fields is refused rather than stored as a float.
//!
//! Message id: the event's own `event_id` when the program sets one (the
//! vendor's id), else SHA-256 of source, topic and body ([`message_id`]),
//! numbered `<id>:<n>` when the request maps to several events; it is then
//! written into the event as its `event_id`.
//!
//! Bounds: the payload is at most the source's body limit, a run keeps at
//! most [`JQ_EVENTS_MAX`] events. jaq has no step limit, so a program is
//! trusted configuration (only an operator writes it, as the config file
//! or over the authenticated admin API); the listener runs it off the
//! async threads, a few at a time. Outputs are converted to at most
//! [`JQ_OUTPUT_DEPTH_MAX`] levels. `env`, `now`, `halt`, `input`-style
//! and logging filters are not available: a program sees only its payload.

use std::fmt;
use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::native::Fun;
use jaq_core::{Compiler, Ctx, Native, Vars, data::JustLut};
use jaq_json::{Num, Val};
use serde_json::{Map, Value};

use super::json::number_text;
use super::{MappedEvent, Plan, message_id, to_bytes};
use crate::events::{ID_MAX_CHARS, RejectReason, Rejection, parse_event};
use crate::source::Source;

/// Most events one request may map to: far beyond a real webhook, a bound
/// on what one run can make us store.
pub const JQ_EVENTS_MAX: usize = 100;
/// Deepest nesting of an output: an event is 4 levels deep; a bound keeps
/// the conversion's recursion (and its stack) small.
pub const JQ_OUTPUT_DEPTH_MAX: usize = 32;
/// Longest program, in bytes: a mapping is a page, not a library.
pub const JQ_PROGRAM_MAX_BYTES: usize = 64 * 1024;
/// The global variables a program may read, in [`JqProgram::run`]'s order.
pub const JQ_VARIABLES: [&str; 3] = ["$topic", "$currency", "$source"];
/// jaq's filters a program may not call: they read the clock, the
/// environment or other inputs, write logs, or stop the process. Each
/// answers an error instead.
const DENIED_FILTERS: [&str; 9] = [
    "env",
    "now",
    "halt",
    "debug_empty",
    "stderr_empty",
    "input",
    "inputs",
    "localtime",
    "strflocaltime",
];

type Data = JustLut<Val>;
type Filter = jaq_core::compile::Filter<Native<Data>>;

/// A compiled jq program and its text.
#[derive(Clone)]
pub struct JqProgram {
    text: Arc<str>,
    filter: Arc<Filter>,
}

impl fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JqProgram({} bytes)", self.text.len())
    }
}

/// Two programs are the same when their text is.
impl PartialEq for JqProgram {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for JqProgram {}

fn denied<'a>(_: jaq_core::Cv<'a, Data>) -> jaq_core::ValXs<'a, <Data as jaq_core::DataT>::V<'a>> {
    jaq_core::box_iter::box_once(Err(jaq_core::Exn::from(jaq_core::Error::str(
        "this filter is not available in a ledgerline program (it reads the clock, the \
         environment or other inputs, logs, or halts)",
    ))))
}

/// jaq's standard filters, with [`DENIED_FILTERS`] answering an error.
fn funs() -> impl Iterator<Item = Fun<Data>> {
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .map(|(name, args, native)| {
            if DENIED_FILTERS.contains(&name) {
                (name, args, Native::<Data>::new(denied))
            } else {
                (name, args, native)
            }
        })
}

/// Line and column (from 1) of `part` within `code`, when it is a slice of it.
fn position(code: &str, part: &str) -> Option<(usize, usize)> {
    let start = (part.as_ptr() as usize).checked_sub(code.as_ptr() as usize)?;
    let before = code.get(..start)?;
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Some((line, column))
}

/// "line L, column C: what" (or just "what" when jaq's error points
/// outside the program, e.g. into its standard library).
fn at(code: &str, part: &str, what: String) -> String {
    match position(code, part) {
        Some((line, column)) => format!("line {line}, column {column}: {what}"),
        None => what,
    }
}

/// The first of jaq's load errors, as "line L, column C: what".
fn load_error(code: &str, e: &jaq_core::load::Error<&str>) -> String {
    use jaq_core::load::Error;
    use jaq_core::load::lex::Expect as Lex;
    match e {
        Error::Io(errs) => errs
            .first()
            .map(|(path, why)| at(code, path, format!("cannot load module {path:?}: {why}"))),
        Error::Lex(errs) => errs.first().map(|(expect, found)| {
            let what = match expect {
                Lex::Digit => "a digit".to_owned(),
                Lex::Ident => "an identifier".to_owned(),
                Lex::Delim(open) => format!("the closing of {open:?}"),
                Lex::Escape => "a string escape sequence".to_owned(),
                Lex::Unicode => "a 4-digit hexadecimal code point".to_owned(),
                Lex::Token => "a token".to_owned(),
                _ => "something else".to_owned(),
            };
            at(code, found, format!("expected {what}"))
        }),
        Error::Parse(errs) => errs.first().map(|(expect, found)| {
            let shown = if found.is_empty() {
                "the end of the program".to_owned()
            } else {
                format!("{:?}", found.chars().take(20).collect::<String>())
            };
            at(
                code,
                found,
                format!("expected {}, found {shown}", expect.as_str()),
            )
        }),
    }
    .unwrap_or_else(|| "the program does not parse".to_owned())
}

fn program_error(message: String) -> crate::registry::FieldError {
    crate::registry::FieldError::new("program", message)
}

impl JqProgram {
    /// Parses and compiles `text`, or says why not (field `program`, with
    /// jaq's message and the line and column).
    pub fn compile(text: &str) -> Result<JqProgram, crate::registry::FieldError> {
        if text.trim().is_empty() {
            return Err(program_error("must not be empty".to_owned()));
        }
        if text.len() > JQ_PROGRAM_MAX_BYTES {
            return Err(program_error(format!(
                "is longer than {JQ_PROGRAM_MAX_BYTES} bytes"
            )));
        }
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(
                &arena,
                File {
                    code: text,
                    path: (),
                },
            )
            .map_err(|errs| {
                let message = errs.first().map_or_else(
                    || "the program does not parse".to_owned(),
                    |(_, e)| load_error(text, e),
                );
                program_error(message)
            })?;
        let filter = Compiler::default()
            .with_funs(funs())
            .with_global_vars(JQ_VARIABLES)
            .compile(modules)
            .map_err(|errs| {
                let first = errs.iter().flat_map(|(_, e)| e.iter()).next();
                let message = first.map_or_else(
                    || "the program does not compile".to_owned(),
                    |(name, undefined)| {
                        let what = match undefined {
                            jaq_core::compile::Undefined::Filter(arity) => {
                                format!("{name}/{arity}")
                            }
                            _ => (*name).to_owned(),
                        };
                        at(
                            text,
                            name,
                            format!("undefined {} {what}", undefined.as_str()),
                        )
                    },
                );
                program_error(message)
            })?;
        Ok(JqProgram {
            text: text.into(),
            filter: Arc::new(filter),
        })
    }

    /// The program's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Runs the program on `input` with the [`JQ_VARIABLES`]: its outputs
    /// (at most [`JQ_EVENTS_MAX`] + 1, so the caller can refuse more), or
    /// jaq's error.
    fn run(&self, input: Val, vars: [Val; 3]) -> Result<Vec<Val>, String> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new(vars));
        let mut out = Vec::new();
        for item in self.filter.id.run((ctx, input)).take(JQ_EVENTS_MAX + 1) {
            match item {
                Ok(v) => out.push(v),
                Err(exn) => {
                    return Err(match exn.get_err() {
                        Ok(e) => e.to_string(),
                        // `halt` answers an error here (DENIED_FILTERS);
                        // any other exception is jaq's own control flow.
                        Err(_) => "the program stopped without a result".to_owned(),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidField, field, message)
}

/// A path in an event, for errors and to tell the decimal fields.
#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn show(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// True for SPEC 1's decimal fields: money and tax rates, sent as strings.
fn is_decimal_field(path: &[Seg]) -> bool {
    let keys: Vec<Option<&str>> = path
        .iter()
        .map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    matches!(
        keys.as_slice(),
        [Some("payment"), Some("amount")]
            | [
                Some("order"),
                Some("line_items"),
                None,
                Some("unit_price" | "discount" | "tax_rate")
            ]
            | [
                Some("order"),
                Some("fees"),
                None,
                Some("amount" | "tax_rate")
            ]
            | [Some("order"), Some("payments"), None, Some("amount")]
    )
}

/// The exact text of a number that did not pass through `f64`, else `None`.
fn exact_text(n: &Num) -> Option<String> {
    match n {
        Num::Int(i) => Some(i.to_string()),
        Num::BigInt(i) => Some(i.to_string()),
        Num::Dec(text) => Some(text.to_string()),
        Num::Float(_) => None,
    }
}

/// One output value as JSON, checking numbers as the module doc says.
fn to_json(v: &Val, path: &mut Vec<Seg>) -> Result<Value, Rejection> {
    if path.len() > JQ_OUTPUT_DEPTH_MAX {
        return Err(invalid(
            show(path),
            format!("is nested deeper than {JQ_OUTPUT_DEPTH_MAX} levels"),
        ));
    }
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::TStr(bytes) => Value::String(utf8(bytes, path)?),
        Val::BStr(_) => {
            return Err(invalid(
                show(path),
                "is a byte string; an event holds text strings only",
            ));
        }
        Val::Num(n) => number(n, path)?,
        Val::Arr(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                out.push(to_json(item, path)?);
                path.pop();
            }
            Value::Array(out)
        }
        Val::Obj(members) => {
            let mut out = Map::with_capacity(members.len());
            for (k, item) in members.iter() {
                let Val::TStr(key) = k else {
                    return Err(invalid(
                        show(path),
                        format!("has the key {k}, not a string"),
                    ));
                };
                let key = utf8(key, path)?;
                path.push(Seg::Key(key.clone()));
                let value = to_json(item, path)?;
                path.pop();
                out.insert(key, value);
            }
            Value::Object(out)
        }
    })
}

fn utf8(bytes: &[u8], path: &[Seg]) -> Result<String, Rejection> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid(show(path), "is not valid UTF-8"))
}

fn number(n: &Num, path: &[Seg]) -> Result<Value, Rejection> {
    let field = show(path);
    let Some(text) = exact_text(n) else {
        let why = if is_decimal_field(path) {
            "is money computed in floating point; pass it through unchanged or as a string"
        } else {
            "is a number computed in floating point; ledgerline stores exact numbers only \
             (integers, or a payload's number passed through unchanged)"
        };
        return Err(invalid(field, format!("{n} {why}")));
    };
    let exact = number_text(&text, &field)?;
    if is_decimal_field(path) {
        // SPEC 1: money and rates are decimal strings.
        return Ok(Value::String(exact.to_string()));
    }
    if !exact.fract().is_zero() {
        return Err(invalid(
            field,
            format!(
                "{text} is a fraction outside the decimal fields (amounts, prices, discounts, \
                 tax rates); send it as a string"
            ),
        ));
    }
    let whole = exact.trunc();
    i64::try_from(whole)
        .map(Value::from)
        .or_else(|_| u64::try_from(whole).map(Value::from))
        .map_err(|_| invalid(field, format!("{text} is out of range")))
}

/// What `body` (to a `jq` source, `topic` from the URL) asks for.
pub(super) fn plan(
    source: &Source,
    program: &JqProgram,
    topic: Option<&str>,
    body: &[u8],
) -> Result<Plan, Rejection> {
    // jaq reads a superset of JSON (comments, NaN): check strict JSON first.
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, "", format!("not JSON: {e}")))?;
    let input = jaq_json::read::parse_single(body)
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, "", format!("not JSON: {e}")))?;
    let text = |s: Option<&str>| s.map_or(Val::Null, |s| Val::from(s.to_owned()));
    let vars = [
        text(topic),
        source
            .currency
            .map_or(Val::Null, |c| Val::from(c.code().to_owned())),
        text(Some(source.id())),
    ];
    let outputs = program.run(input, vars).map_err(|e| {
        invalid(
            "program",
            format!("the jq program failed on this payload: {e}"),
        )
    })?;
    if outputs.is_empty() {
        return Ok(Plan::Ignored {
            topic: topic.unwrap_or("").to_owned(),
        });
    }
    if outputs.len() > JQ_EVENTS_MAX {
        return Err(invalid(
            "program",
            format!("the jq program made more than {JQ_EVENTS_MAX} events of one payload"),
        ));
    }
    let several = outputs.len() > 1;
    let base_id = message_id(source.id(), topic.unwrap_or(""), body);
    let mut events = Vec::with_capacity(outputs.len());
    for (i, out) in outputs.iter().enumerate() {
        let prefix = if several {
            format!("[{i}]")
        } else {
            String::new()
        };
        let within = |r: Rejection| {
            if prefix.is_empty() {
                r
            } else if r.field.is_empty() {
                Rejection {
                    field: prefix.clone(),
                    ..r
                }
            } else if r.field.starts_with('[') {
                r
            } else {
                Rejection {
                    field: format!("{prefix}.{}", r.field),
                    ..r
                }
            }
        };
        let Value::Object(mut event) = to_json(out, &mut Vec::new()).map_err(within)? else {
            return Err(within(invalid(
                "",
                "each output of the jq program must be an event (a JSON object)",
            )));
        };
        let msg_id = match event.get("event_id") {
            Some(Value::String(id))
                if !id.trim().is_empty() && id.chars().count() <= ID_MAX_CHARS =>
            {
                id.clone()
            }
            Some(Value::Null) | None => {
                let id = if several {
                    format!("{base_id}:{}", i + 1)
                } else {
                    base_id.clone()
                };
                // The id first, as every other kind writes it.
                let mut first = Map::with_capacity(event.len() + 1);
                first.insert("event_id".to_owned(), Value::String(id.clone()));
                event.remove("event_id");
                first.extend(event);
                event = first;
                id
            }
            Some(_) => {
                return Err(within(invalid(
                    "event_id",
                    format!("must be a non-empty string of at most {ID_MAX_CHARS} characters"),
                )));
            }
        };
        if events.iter().any(|e: &MappedEvent| e.msg_id == msg_id) {
            return Err(within(invalid(
                "event_id",
                format!("{msg_id:?} is given to two events of one payload"),
            )));
        }
        let payload = to_bytes(&Value::Object(event));
        let parsed = parse_event(&payload, None).map_err(within)?;
        events.push(MappedEvent {
            order_id: parsed.order_id,
            msg_id,
            payload,
        });
    }
    Ok(Plan::Store(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceConfig;

    /// A payment program of the shape docs/inbound.md shows.
    const PAYMENTS: &str = r#"
        if $topic == "charge/refunded" then
          {type: "payment.created", order_id: .order, occurred_at: .at,
           payment: {payment_id: .id, method: "card", amount: -.amount, currency: $currency, date: .at}}
        elif $topic == "charge/succeeded" then
          {event_id: .event, type: "payment.created", order_id: .order, occurred_at: .at,
           payment: {payment_id: .id, method: "card", amount: .amount, currency: $currency, date: .at}}
        elif $topic == "charge/doubled" then
          {type: "payment.created", order_id: .order, occurred_at: .at,
           payment: {payment_id: .id, method: "card", amount: (.amount * 2), currency: $currency, date: .at}}
        else empty end
    "#;

    fn source(program: &str) -> Source {
        let c = SourceConfig {
            program: Some(program.to_owned()),
            ..toml::from_str("id = \"psp\"\nkind = \"jq\"\ncurrency = \"EUR\"").unwrap()
        };
        c.validate().unwrap()
    }

    fn run(program: &str, topic: &str, body: &str) -> Result<Plan, Rejection> {
        super::super::plan(&source(program), Some(topic), body.as_bytes())
    }

    fn stored(plan: Result<Plan, Rejection>) -> Vec<Value> {
        match plan {
            Ok(Plan::Store(events)) => events
                .iter()
                .map(|e| serde_json::from_slice(&e.payload).unwrap())
                .collect(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    fn charge(amount: &str) -> String {
        format!(
            r#"{{"event": "ev-1", "id": "ch_1", "order": "o-1", "at": "2026-11-22T10:00:00Z", "amount": {amount}}}"#
        )
    }

    #[test]
    fn money_passes_through_as_its_exact_text() {
        for (amount, want) in [
            ("0.1", "0.1"),
            ("0.2", "0.2"),
            ("12345678901234.56", "12345678901234.56"),
            ("\"7.50\"", "7.50"),
            ("100", "100"),
            ("1.5e2", "150"),
            ("-3.25", "-3.25"),
        ] {
            let events = stored(run(PAYMENTS, "charge/succeeded", &charge(amount)));
            assert_eq!(events[0]["payment"]["amount"], want, "{amount}");
            assert_eq!(events[0]["event_id"], "ev-1");
        }
    }

    #[test]
    fn a_refund_is_negated_without_floating_point() {
        let body = charge("12345678901234.56");
        let events = stored(run(PAYMENTS, "charge/refunded", &body));
        assert_eq!(events[0]["payment"]["amount"], "-12345678901234.56");
        // No event id in the output: the hash of source, topic and body.
        let id = message_id("psp", "charge/refunded", body.as_bytes());
        assert_eq!(events[0]["event_id"], id.as_str());
        let first_key = events[0]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        assert_eq!(first_key, "event_id");
    }

    #[test]
    fn money_computed_in_floating_point_is_refused_naming_the_field() {
        let e = run(PAYMENTS, "charge/doubled", &charge("0.1")).unwrap_err();
        assert_eq!(e.field, "payment.amount");
        assert!(e.message.contains("computed in floating point"), "{e:?}");
        // Integer arithmetic stays exact: 2 × 100 is 200.
        let events = stored(run(PAYMENTS, "charge/doubled", &charge("100")));
        assert_eq!(events[0]["payment"]["amount"], "200");
    }

    #[test]
    fn more_decimals_than_the_currency_has_are_refused() {
        let e = run(PAYMENTS, "charge/succeeded", &charge("0.105")).unwrap_err();
        assert_eq!(
            (e.reason, e.field.as_str()),
            (RejectReason::TooManyDecimals, "payment.amount")
        );
    }

    #[test]
    fn no_output_is_an_ignored_topic_and_errors_name_the_program() {
        assert_eq!(
            run(PAYMENTS, "charge/pending", &charge("1")).unwrap(),
            Plan::Ignored {
                topic: "charge/pending".to_owned()
            }
        );
        let e = run(r#"error("no such charge")"#, "x", "{}").unwrap_err();
        assert_eq!(e.field, "program");
        assert!(e.message.contains("no such charge"), "{e:?}");
        let e = run("env", "x", "{}").unwrap_err();
        assert_eq!(e.field, "program");
        let e = run("halt", "x", "{}").unwrap_err();
        assert_eq!(e.field, "program");
        let e = run(".", "x", "{\"a\": 1").unwrap_err();
        assert_eq!(e.reason, RejectReason::MalformedJson);
        let e = run(".", "x", "{\"type\": \"payment.created\"}").unwrap_err();
        assert_eq!(e.reason, RejectReason::MissingField);
        let e = run("1, 2", "x", "{}").unwrap_err();
        assert_eq!(e.field, "[0]");
        let e = run("{quantity: 0.5}", "x", "{}").unwrap_err();
        assert_eq!(e.field, "quantity");
        let e = run("{a: (reduce range(100) as $i (null; [.]))}", "x", "{}").unwrap_err();
        assert!(e.message.contains("nested deeper than"), "{e:?}");
    }

    #[test]
    fn several_events_are_numbered_and_checked_each() {
        let program = r#".lines[] | {type: "payment.created", order_id: "o-1",
            occurred_at: "2026-11-22T10:00:00Z",
            payment: {payment_id: .id, method: "card", amount: .n, currency: "EUR", date: "2026-11-22"}}"#;
        let body = r#"{"lines": [{"id": "a", "n": 1}, {"id": "b", "n": 2.5}]}"#;
        let events = stored(run(program, "x", body));
        let id = message_id("psp", "x", body.as_bytes());
        assert_eq!(events[1]["event_id"], format!("{id}:2"));
        assert_eq!(events[1]["payment"]["amount"], "2.5");
        let e = run(
            program,
            "x",
            r#"{"lines": [{"id": "a", "n": 1}, {"id": "b", "n": 1.005}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "[1].payment.amount");
    }

    #[test]
    fn a_bad_program_is_refused_at_load_with_its_position() {
        let c = |program: &str| SourceConfig {
            program: Some(program.to_owned()),
            ..toml::from_str("id = \"psp\"\nkind = \"jq\"").unwrap()
        };
        let e = c("{a: .b,\n  c: (.d | }").validate().unwrap_err();
        assert_eq!(e.field, "program");
        assert!(e.message.starts_with("line 2, column"), "{e}");
        let e = c(".a | no_such_filter(1)").validate().unwrap_err();
        assert!(e.message.contains("no_such_filter/1"), "{e}");
        assert!(e.message.starts_with("line 1, column 6"), "{e}");
        let e = c("$nope").validate().unwrap_err();
        assert!(e.message.contains("$nope"), "{e}");
        let e = toml::from_str::<SourceConfig>("id = \"psp\"\nkind = \"jq\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "program");
        let e = SourceConfig {
            program: Some(".".to_owned()),
            ..toml::from_str("id = \"psp\"\nkind = \"events\"").unwrap()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "program");
    }
}
