//! Celery's wire format, both ways: protocol 2 task messages (what Portico publishes and
//! what `portico worker --broker` consumes) and result metas (what workers write to the
//! result backend and Portico reads back into its records).
//!
//! Pure functions, no I/O: every byte the spec (`specs/jobs.md` section 3) lists is made
//! and checked here, so the unit tests below pin the format.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::{Change, Failure, JobId, State};

/// A task message ready to publish on the default exchange.
#[derive(Debug, Clone)]
pub struct TaskMessage {
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// What goes into one task message.
#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    pub id: JobId,
    /// `"<celery_app>.<celery_task_name>"`.
    pub task: &'a str,
    /// The one positional argument (the ServiceGateway task message).
    pub message: &'a Value,
    /// Celery's `retries` header (0 for a submission; Portico's republishes count up).
    pub retries: u32,
    /// The queue the workers write `rpc` states to.
    pub reply_to: &'a str,
    /// `"<pid>@<host>"`.
    pub origin: &'a str,
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The body's third element, Celery's `embed` (keys in serde_json's order, as before).
const EMBED: &[u8] = br#"{"callbacks":null,"chain":null,"chord":null,"errbacks":null}"#;

/// Builds a protocol 2 message exactly as the spec lists, then validates it.
///
/// The body is written straight into its buffer (`[[<message>],{},<embed>]`): it has three
/// elements and is JSON by construction, so validating the message checks its headers only
/// ([`validate_headers`]); [`validate`] also parses a body, for messages made elsewhere.
/// (Encoding the body through a `serde_json::Value`, reparsing it and building `argsrepr`
/// through nested `String`s cost 15% of the gateway's CPU per submission.)
pub fn task_message(task: &NewTask<'_>) -> Result<TaskMessage, String> {
    let id = task.id.to_string();
    let mut argsrepr = String::with_capacity(64);
    argsrepr.push('[');
    write_python_repr(&mut argsrepr, task.message);
    argsrepr.push(']');
    let mut headers = FieldTable::default();
    let mut put = |key: &str, value: AMQPValue| headers.insert(ShortString::from(key), value);
    put("lang", text("py"));
    put("task", text(task.task));
    put("id", text(&id));
    put("root_id", text(&id));
    put("parent_id", AMQPValue::Void);
    put("group", AMQPValue::Void);
    put("shadow", AMQPValue::Void);
    put("eta", AMQPValue::Void);
    put("expires", AMQPValue::Void);
    put(
        "retries",
        AMQPValue::LongInt(task.retries.min(i32::MAX as u32) as i32),
    );
    put(
        "timelimit",
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void, AMQPValue::Void])),
    );
    put(
        "argsrepr",
        AMQPValue::LongString(LongString::from(argsrepr)),
    );
    put("kwargsrepr", text("{}"));
    put("origin", text(task.origin));
    put("ignore_result", AMQPValue::Boolean(false));
    let mut body = Vec::with_capacity(96 + EMBED.len());
    body.extend_from_slice(b"[[");
    serde_json::to_writer(&mut body, task.message)
        .map_err(|e| format!("encoding the body: {e}"))?;
    body.extend_from_slice(b"],{},");
    body.extend_from_slice(EMBED);
    body.push(b']');
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(2)
        .with_priority(0)
        .with_correlation_id(ShortString::from(id))
        .with_reply_to(ShortString::from(task.reply_to))
        .with_headers(headers);
    let message = TaskMessage { properties, body };
    validate_headers(message.properties.headers().as_ref())?;
    Ok(message)
}

/// A message a Celery worker can run without dying: a `task` and an `id` header that is a
/// uuid, and a JSON body `[args, kwargs, embed]` (a two-element body, or a missing id,
/// kills a Celery worker and the message loops between workers).
pub fn validate(message: &TaskMessage) -> Result<(), String> {
    validate_headers(message.properties.headers().as_ref())?;
    parse_task(message.properties.headers().as_ref(), &message.body).map(drop)
}

/// The headers' part of [`validate`]: an `id` that is a uuid and a `task` that is not empty.
pub fn validate_headers(headers: Option<&FieldTable>) -> Result<(), String> {
    let headers = headers.ok_or("no headers (a protocol 1 message?)")?;
    let header = |key: &str| headers.inner().get(key);
    match header("id") {
        Some(AMQPValue::LongString(s)) => {
            let id = s.to_string();
            id.parse::<JobId>()
                .map_err(|_| format!("the id header {id:?} is not a uuid"))?;
        }
        _ => return Err("no id header".into()),
    }
    match header("task") {
        Some(AMQPValue::LongString(s)) if !s.to_string().trim().is_empty() => Ok(()),
        Some(AMQPValue::LongString(_)) => Err("the task name is empty".into()),
        _ => Err("no task header".into()),
    }
}

/// A task message as a consumer reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedTask {
    pub id: JobId,
    pub task: String,
    /// `args[0]`: the ServiceGateway message (null when there is no positional argument).
    pub message: Value,
    pub args: Value,
    pub retries: u32,
}

/// Reads a protocol 2 message: headers `task`, `id`, `retries`, body `[args, kwargs, embed]`.
pub fn parse_task(headers: Option<&FieldTable>, body: &[u8]) -> Result<ReceivedTask, String> {
    let headers = headers.ok_or("no headers (a protocol 1 message?)")?;
    let header = |key: &str| headers.inner().get(key);
    let id = match header("id") {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        _ => return Err("no id header".into()),
    };
    let id: JobId = id
        .parse()
        .map_err(|_| format!("the id header {id:?} is not a uuid"))?;
    let task = match header("task") {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        _ => return Err("no task header".into()),
    };
    let retries = match header("retries") {
        Some(value) => amqp_int(value).unwrap_or(0),
        None => 0,
    };
    let body: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let parts = body
        .as_array()
        .filter(|parts| parts.len() == 3)
        .ok_or("the body is not [args, kwargs, embed]")?;
    let args = parts[0].clone();
    if !args.is_array() || !parts[1].is_object() || !parts[2].is_object() {
        return Err("the body is not [list, object, object]".into());
    }
    let message = args.get(0).cloned().unwrap_or(Value::Null);
    Ok(ReceivedTask {
        id,
        task,
        message,
        args,
        retries: u32::try_from(retries.max(0)).unwrap_or(0),
    })
}

fn amqp_int(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

/// Python's `repr` of a JSON value, as Celery writes `argsrepr` (close enough for logs).
pub fn python_repr(value: &Value) -> String {
    let mut out = String::new();
    write_python_repr(&mut out, value);
    out
}

/// [`python_repr`] into `out`.
fn write_python_repr(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_python_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_str(out, key);
                out.push_str(": ");
                write_python_repr(out, item);
            }
            out.push('}');
        }
    }
}

/// A string as `python_repr` quotes it: single quotes, `\\` and `\'` escaped.
fn write_python_str(out: &mut String, s: &str) {
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// A state as a result backend holds it: `{"task_id","status","result","traceback",
/// "children","date_done"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMeta {
    pub task_id: JobId,
    pub status: State,
    pub result: Value,
    pub traceback: Option<String>,
}

impl ResultMeta {
    /// Reads a result meta (rpc and amqp message bodies, Redis values).
    pub fn parse(bytes: &[u8]) -> Result<ResultMeta, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("a result that is not JSON: {e}"))?;
        let task_id = value
            .get("task_id")
            .and_then(Value::as_str)
            .ok_or("a result without task_id")?
            .parse()
            .map_err(|_| "a result whose task_id is not a uuid".to_string())?;
        let status = value
            .get("status")
            .and_then(Value::as_str)
            .ok_or("a result without status")?
            .parse()
            .map_err(|e: crate::Error| e.to_string())?;
        Ok(ResultMeta {
            task_id,
            status,
            result: value.get("result").cloned().unwrap_or(Value::Null),
            traceback: value
                .get("traceback")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// The JSON a Celery worker writes for this state.
    pub fn to_json(&self, now: OffsetDateTime) -> Value {
        let date = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        json!({
            "task_id": self.task_id.to_string(),
            "status": self.status.as_str(),
            "result": self.result,
            "traceback": self.traceback,
            "children": [],
            "date_done": if self.status.is_final() { Value::String(date) } else { Value::Null },
        })
    }

    /// The change this state makes to Portico's record.
    pub fn change(&self) -> Change {
        let (meta, result, error, progress) = match &self.status {
            State::Success => (Value::Null, self.result.clone(), None, Some(100)),
            State::Failure | State::Revoked | State::Retry => {
                (Value::Null, Value::Null, Some(failure(&self.result)), None)
            }
            State::Pending | State::Expired => (Value::Null, Value::Null, None, None),
            _ => (
                self.result.clone(),
                Value::Null,
                None,
                percent(&self.result),
            ),
        };
        Change::External {
            state: self.status.clone(),
            progress,
            meta,
            result,
            error,
        }
    }
}

/// `current` out of `total` (100 when absent) as a percentage, when the meta says it.
pub fn percent(meta: &Value) -> Option<u8> {
    let current = meta.get("current")?.as_f64()?;
    let total = meta.get("total").and_then(Value::as_f64).unwrap_or(100.0);
    if total <= 0.0 || !current.is_finite() {
        return None;
    }
    Some((current / total * 100.0).clamp(0.0, 100.0).round() as u8)
}

/// Celery's exception encoding `{"exc_type","exc_message":[...],"exc_module"}` as a failure.
pub fn failure(result: &Value) -> Failure {
    let exc_type = result
        .get("exc_type")
        .and_then(Value::as_str)
        .map(str::to_string);
    let message = match result.get("exc_message") {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None if result.is_null() => String::new(),
        None => result.to_string(),
    };
    Failure { message, exc_type }
}

/// The exception a failure is written as: `{"exc_type","exc_message":[msg],"exc_module"}`.
pub fn exception(exc_type: &str, message: &str) -> Value {
    json!({"exc_type": exc_type, "exc_message": [message], "exc_module": "builtins"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: JobId) -> TaskMessage {
        task_message(&NewTask {
            id,
            task: "worker.transcoder",
            message: &json!({"service": {"type": "transcoder"}}),
            retries: 0,
            reply_to: "portico.replies",
            origin: "7@host",
        })
        .expect("valid")
    }

    #[test]
    fn task_messages_carry_celerys_protocol_2_headers_and_body() {
        let id = JobId::new();
        let message = sample(id);
        let p = &message.properties;
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.content_encoding().as_ref().unwrap().as_str(), "utf-8");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.priority(), Some(0));
        assert_eq!(
            p.correlation_id().as_ref().unwrap().as_str(),
            id.to_string()
        );
        assert_eq!(p.reply_to().as_ref().unwrap().as_str(), "portico.replies");
        let headers = p.headers().as_ref().unwrap().inner();
        let keys: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        for key in [
            "lang",
            "task",
            "id",
            "root_id",
            "parent_id",
            "group",
            "shadow",
            "eta",
            "expires",
            "retries",
            "timelimit",
            "argsrepr",
            "kwargsrepr",
            "origin",
            "ignore_result",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(headers["task"], text("worker.transcoder"));
        assert_eq!(headers["parent_id"], AMQPValue::Void);
        assert_eq!(headers["ignore_result"], AMQPValue::Boolean(false));
        assert_eq!(
            headers["argsrepr"],
            text("[{'service': {'type': 'transcoder'}}]")
        );
        let expected = json!([[{"service": {"type": "transcoder"}}], {},
               {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
        // Byte for byte what serde_json writes for the body as a value.
        assert_eq!(
            String::from_utf8_lossy(&message.body),
            serde_json::to_string(&expected).unwrap()
        );
        assert!(validate(&message).is_ok());
        let parsed = parse_task(p.headers().as_ref(), &message.body).unwrap();
        assert_eq!((parsed.id, parsed.retries), (id, 0));
        assert_eq!(parsed.message["service"]["type"], "transcoder");
    }

    #[test]
    fn argsrepr_is_pythons_repr_of_the_arguments() {
        let value = json!({"a'b": ["x\\y", 1, 2.5, true, false, null, {}], "z": "it's"});
        assert_eq!(
            python_repr(&value),
            r#"{'a\'b': ['x\\y', 1, 2.5, True, False, None, {}], 'z': 'it\'s'}"#
        );
    }

    #[test]
    fn messages_that_would_kill_a_worker_are_refused() {
        let good = sample(JobId::new());
        let mut two = good.clone();
        two.body = serde_json::to_vec(&json!([[1], {}])).unwrap();
        assert!(validate(&two).is_err());
        let mut no_id = good.clone();
        let mut headers = good.properties.headers().clone().unwrap();
        headers.inner_mut_for_test_remove("id");
        no_id.properties = no_id.properties.with_headers(headers);
        assert!(validate(&no_id).is_err());
        let mut not_json = good;
        not_json.body = b"[[1], {}, {".to_vec();
        assert!(validate(&not_json).is_err());
    }

    trait RemoveKey {
        fn inner_mut_for_test_remove(&mut self, key: &str);
    }

    impl RemoveKey for FieldTable {
        fn inner_mut_for_test_remove(&mut self, key: &str) {
            let kept: Vec<(ShortString, AMQPValue)> = self
                .inner()
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut table = FieldTable::default();
            for (k, v) in kept {
                table.insert(k, v);
            }
            *self = table;
        }
    }

    #[test]
    fn result_metas_become_record_changes() {
        let id = JobId::new();
        let progress = format!(
            r#"{{"task_id":"{id}","status":"PROGRESS","result":{{"current":40,"total":100,"worker_id_version":"1"}},"traceback":null,"children":[]}}"#
        );
        let meta = ResultMeta::parse(progress.as_bytes()).unwrap();
        let Change::External {
            state,
            progress,
            meta,
            ..
        } = meta.change()
        else {
            panic!("external")
        };
        assert_eq!((state, progress), (State::Progress, Some(40)));
        assert_eq!(meta["worker_id_version"], "1");
        let failed = format!(
            r#"{{"task_id":"{id}","status":"FAILURE","result":{{"exc_type":"ValueError","exc_message":["boom"],"exc_module":"builtins"}},"traceback":"Traceback..."}}"#
        );
        let Change::External { state, error, .. } =
            ResultMeta::parse(failed.as_bytes()).unwrap().change()
        else {
            panic!("external")
        };
        assert_eq!(state, State::Failure);
        assert_eq!(
            error,
            Some(Failure {
                message: "boom".into(),
                exc_type: Some("ValueError".into())
            })
        );
        assert!(ResultMeta::parse(b"{\"status\":\"SUCCESS\"}").is_err());
        assert!(ResultMeta::parse(b"nope").is_err());
    }

    #[test]
    fn percent_reads_current_over_total() {
        assert_eq!(percent(&json!({"current": 3, "total": 4})), Some(75));
        assert_eq!(percent(&json!({"current": 42})), Some(42));
        assert_eq!(percent(&json!({"current": 500, "total": 100})), Some(100));
        assert_eq!(percent(&json!({"total": 100})), None);
        assert_eq!(percent(&json!({"current": 1, "total": 0})), None);
    }
}
