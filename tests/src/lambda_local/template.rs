//! What the local stand-in reads from `template.yaml`: each function's binary, timeout, memory,
//! reserved concurrency, environment, log group, events (HTTP API routes, the SQS mapping's
//! batch size and maximum concurrency, the schedule's input) and inline policy statements; the
//! HTTP API's default route throttling; the queue's visibility timeout and redrive count.
//!
//! Intrinsic functions are resolved against the local resources (`!Ref`, `!GetAtt`, `!Sub`, their
//! long forms, and parameters with their defaults); anything else is refused with its name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TemplateError {
    #[error("could not read {0}: {1}")]
    Read(String, String),
    #[error("template.yaml is not valid: {0}")]
    Parse(String),
    #[error("{0}: {1}")]
    Invalid(String, String),
    #[error("{what} refers to {target}, which the local stand-in does not provide")]
    Unresolved { what: String, target: String },
}

/// A template value that may be an intrinsic function.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(String),
    Ref(String),
    GetAtt(String, String),
    Sub(String),
    /// Something the stand-in does not evaluate (described).
    Unsupported(String),
}

impl Expr {
    fn from_value(v: Value) -> Self {
        match v {
            Value::String(s) => Expr::Literal(s),
            Value::Number(n) => Expr::Literal(n.to_string()),
            Value::Bool(b) => Expr::Literal(b.to_string()),
            Value::Tagged(t) => {
                if t.tag == "Ref" {
                    match t.value {
                        Value::String(s) => Expr::Ref(s),
                        other => Expr::Unsupported(format!("!Ref {other:?}")),
                    }
                } else if t.tag == "GetAtt" {
                    match t.value {
                        Value::String(s) => match s.split_once('.') {
                            Some((r, a)) => Expr::GetAtt(r.into(), a.into()),
                            None => Expr::Unsupported(format!("!GetAtt {s}")),
                        },
                        Value::Sequence(seq) => get_att_pair(seq),
                        other => Expr::Unsupported(format!("!GetAtt {other:?}")),
                    }
                } else if t.tag == "Sub" {
                    match t.value {
                        Value::String(s) => Expr::Sub(s),
                        other => Expr::Unsupported(format!("!Sub {other:?}")),
                    }
                } else {
                    Expr::Unsupported(format!("{}", t.tag))
                }
            }
            Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().expect("one entry");
                match (k.as_str(), v) {
                    (Some("Ref"), Value::String(s)) => Expr::Ref(s),
                    (Some("Fn::GetAtt"), Value::Sequence(seq)) => get_att_pair(seq),
                    (Some("Fn::Sub"), Value::String(s)) => Expr::Sub(s),
                    (k, _) => Expr::Unsupported(format!("{k:?}")),
                }
            }
            other => Expr::Unsupported(format!("{other:?}")),
        }
    }
}

fn get_att_pair(seq: Vec<Value>) -> Expr {
    match seq.as_slice() {
        [Value::String(r), Value::String(a)] => Expr::GetAtt(r.clone(), a.clone()),
        _ => Expr::Unsupported(format!("GetAtt {seq:?}")),
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Expr::from_value(Value::deserialize(d)?))
    }
}

/// One value or a list of them, as IAM statements allow.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TemplateDoc {
    #[serde(default)]
    parameters: BTreeMap<String, ParameterDoc>,
    #[serde(default)]
    globals: GlobalsDoc,
    resources: BTreeMap<String, ResourceDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ParameterDoc {
    #[serde(default)]
    default: Option<Expr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GlobalsDoc {
    #[serde(default)]
    function: FunctionProps,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResourceDoc {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(default)]
    properties: Value,
    #[serde(default)]
    metadata: Value,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FunctionProps {
    timeout: Option<Expr>,
    memory_size: Option<Expr>,
    reserved_concurrent_executions: Option<Expr>,
    environment: Option<EnvironmentDoc>,
    logging_config: Option<LoggingConfigDoc>,
    #[serde(default)]
    events: BTreeMap<String, EventDoc>,
    #[serde(default)]
    policies: Vec<Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnvironmentDoc {
    #[serde(default)]
    variables: BTreeMap<String, Expr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LoggingConfigDoc {
    log_group: Option<Expr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "Type", content = "Properties")]
enum EventDoc {
    HttpApi(HttpApiEventDoc),
    #[serde(rename = "SQS")]
    Sqs(SqsEventDoc),
    ScheduleV2(ScheduleEventDoc),
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HttpApiEventDoc {
    path: String,
    method: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SqsEventDoc {
    queue: Expr,
    batch_size: Option<Expr>,
    #[serde(default)]
    function_response_types: Vec<String>,
    scaling_config: Option<ScalingConfigDoc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScalingConfigDoc {
    maximum_concurrency: Option<Expr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduleEventDoc {
    schedule_expression: Expr,
    input: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StatementDoc {
    effect: String,
    action: OneOrMany<String>,
    resource: Exprs,
    /// Plain values only (no intrinsic functions), as the template writes them.
    #[serde(default)]
    condition: Option<serde_json::Value>,
}

/// One expression or a list of them.
#[derive(Debug)]
struct Exprs(Vec<Expr>);

impl<'de> Deserialize<'de> for Exprs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Exprs(match Value::deserialize(d)? {
            Value::Sequence(seq) => seq.into_iter().map(Expr::from_value).collect(),
            one => vec![Expr::from_value(one)],
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BuildMetadataDoc {
    build_properties: BuildPropertiesDoc,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BuildPropertiesDoc {
    binary: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HttpApiDoc {
    default_route_settings: Option<RouteSettingsDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RouteSettingsDoc {
    throttling_burst_limit: Option<Expr>,
    throttling_rate_limit: Option<Expr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueueDoc {
    visibility_timeout: Option<Expr>,
    redrive_policy: Option<RedriveDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedriveDoc {
    max_receive_count: Expr,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LogGroupDoc {
    log_group_name: Option<Expr>,
    retention_in_days: Option<Expr>,
}

/// The values `!Ref` and `!GetAtt` give for one resource.
#[derive(Debug, Clone, Default)]
pub struct ResourceValues {
    pub reference: String,
    pub attributes: BTreeMap<String, String>,
}

/// Resolves intrinsic functions: parameters (defaults, then overrides), pseudo parameters and
/// the local resources.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub parameters: BTreeMap<String, String>,
    pub resources: BTreeMap<String, ResourceValues>,
    pub region: String,
    pub account_id: String,
    pub stack_name: String,
}

impl Resolver {
    fn pseudo(&self, name: &str) -> Option<String> {
        Some(match name {
            "AWS::Region" => self.region.clone(),
            "AWS::AccountId" => self.account_id.clone(),
            "AWS::Partition" => "aws".into(),
            "AWS::StackName" => self.stack_name.clone(),
            "AWS::URLSuffix" => "amazonaws.com".into(),
            _ => return None,
        })
    }

    pub fn resolve(&self, what: &str, e: &Expr) -> Result<String, TemplateError> {
        let unresolved = |target: String| TemplateError::Unresolved { what: what.to_string(), target };
        match e {
            Expr::Literal(s) => Ok(s.clone()),
            Expr::Ref(name) => self
                .parameters
                .get(name)
                .cloned()
                .or_else(|| self.pseudo(name))
                .or_else(|| self.resources.get(name).map(|r| r.reference.clone()))
                .ok_or_else(|| unresolved(format!("!Ref {name}"))),
            Expr::GetAtt(r, a) => self
                .resources
                .get(r)
                .and_then(|v| v.attributes.get(a))
                .cloned()
                .ok_or_else(|| unresolved(format!("!GetAtt {r}.{a}"))),
            Expr::Sub(s) => {
                let mut out = String::new();
                let mut rest = s.as_str();
                while let Some(start) = rest.find("${") {
                    out.push_str(&rest[..start]);
                    let end = rest[start..].find('}').ok_or_else(|| unresolved(format!("!Sub {s}")))? + start;
                    let name = &rest[start + 2..end];
                    let value = match name.split_once('.') {
                        Some((r, a)) if !name.starts_with("AWS::") => {
                            self.resolve(what, &Expr::GetAtt(r.into(), a.into()))?
                        }
                        _ => self.resolve(what, &Expr::Ref(name.into()))?,
                    };
                    out.push_str(&value);
                    rest = &rest[end + 1..];
                }
                out.push_str(rest);
                Ok(out)
            }
            Expr::Unsupported(d) => Err(unresolved(d.clone())),
        }
    }

    fn number<T: std::str::FromStr>(&self, what: &str, e: &Expr) -> Result<T, TemplateError> {
        let v = self.resolve(what, e)?;
        v.trim().parse().map_err(|_| TemplateError::Invalid(what.to_string(), format!("'{v}' is not a number")))
    }
}

/// An HTTP API route of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDef {
    /// The event's name in the template.
    pub name: String,
    /// `GET`, `POST`, … or `ANY`.
    pub method: String,
    /// `/v1/contacts/{email}`, `/{proxy+}`, or `$default`.
    pub path: String,
}

/// An SQS event-source mapping of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsSourceDef {
    pub name: String,
    pub queue_arn: String,
    pub batch_size: u32,
    pub maximum_concurrency: Option<u32>,
    pub report_batch_item_failures: bool,
}

/// A schedule of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDef {
    pub name: String,
    pub expression: String,
    /// The input as the scheduler passes it (JSON).
    pub input: serde_json::Value,
}

/// One inline policy statement, resolved.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct StatementDef {
    #[serde(rename = "Effect")]
    pub effect: String,
    #[serde(rename = "Action")]
    pub actions: Vec<String>,
    #[serde(rename = "Resource")]
    pub resources: Vec<String>,
    /// The statement's `Condition` (the local moto launcher checks `dynamodb:LeadingKeys`).
    #[serde(rename = "Condition", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<serde_json::Value>,
}

/// A function as the template declares it, resolved.
#[derive(Debug, Clone)]
pub struct FunctionDef {
    pub logical_id: String,
    /// The binary (`Metadata.BuildProperties.Binary`); also the local function name.
    pub binary: String,
    pub timeout: Duration,
    pub memory_mb: u32,
    pub reserved_concurrency: Option<u32>,
    pub environment: BTreeMap<String, String>,
    /// `LoggingConfig.LogGroup`, else `/aws/lambda/<function name>`.
    pub log_group: String,
    pub routes: Vec<RouteDef>,
    pub sqs: Vec<SqsSourceDef>,
    pub schedules: Vec<ScheduleDef>,
    pub statements: Vec<StatementDef>,
}

/// The HTTP API's default route throttling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleDef {
    pub burst: u32,
    pub rate_per_sec: f64,
}

/// A queue's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueDef {
    pub visibility_timeout_secs: u32,
    pub max_receive_count: Option<u32>,
}

/// A log group's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LogGroupDef {
    pub logical_id: String,
    pub name: Option<Expr>,
    pub retention_days: Option<u32>,
}

/// The parsed template.
pub struct Template {
    doc: TemplateDoc,
}

/// The project's `template.yaml` (beside the workspace root).
pub fn default_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml")
}

impl Template {
    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TemplateError::Read(path.display().to_string(), e.to_string()))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let doc: TemplateDoc = serde_norway::from_str(text).map_err(|e| TemplateError::Parse(e.to_string()))?;
        Ok(Self { doc })
    }

    /// A resolver with the parameters' defaults (overridden by `overrides`) and no resources yet.
    pub fn resolver(&self, overrides: &[(&str, &str)], stack_name: &str) -> Resolver {
        let mut parameters = BTreeMap::new();
        for (name, p) in &self.doc.parameters {
            if let Some(Expr::Literal(v)) = &p.default {
                parameters.insert(name.clone(), v.clone());
            }
        }
        for (k, v) in overrides {
            parameters.insert(k.to_string(), v.to_string());
        }
        Resolver {
            parameters,
            resources: BTreeMap::new(),
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            stack_name: stack_name.into(),
        }
    }

    fn resources_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a String, &'a ResourceDoc)> + 'a {
        self.doc.resources.iter().filter(move |(_, r)| r.kind == kind)
    }

    fn typed<T: for<'de> Deserialize<'de>>(id: &str, v: &Value) -> Result<T, TemplateError> {
        serde_norway::from_value(v.clone()).map_err(|e| TemplateError::Invalid(id.to_string(), e.to_string()))
    }

    /// The logical ids of the template's functions.
    pub fn function_ids(&self) -> Vec<String> {
        self.resources_of("AWS::Serverless::Function").map(|(id, _)| id.clone()).collect()
    }

    /// Every function, resolved with `r`.
    pub fn functions(&self, r: &Resolver) -> Result<Vec<FunctionDef>, TemplateError> {
        self.function_ids().iter().map(|id| self.function(id, r)).collect()
    }

    /// One function, resolved with `r` (its own properties over `Globals.Function`).
    pub fn function(&self, id: &str, r: &Resolver) -> Result<FunctionDef, TemplateError> {
        let res = self
            .doc
            .resources
            .get(id)
            .filter(|res| res.kind == "AWS::Serverless::Function")
            .ok_or_else(|| TemplateError::Invalid(id.into(), "no such function".into()))?;
        let props: FunctionProps = Self::typed(id, &res.properties)?;
        let build: BuildMetadataDoc = Self::typed(&format!("{id}.Metadata"), &res.metadata)?;
        let g = &self.doc.globals.function;
        let what = |k: &str| format!("{id}.{k}");
        let timeout = match props.timeout.as_ref().or(g.timeout.as_ref()) {
            Some(e) => Duration::from_secs(r.number(&what("Timeout"), e)?),
            None => Duration::from_secs(3),
        };
        let memory_mb = match props.memory_size.as_ref().or(g.memory_size.as_ref()) {
            Some(e) => r.number(&what("MemorySize"), e)?,
            None => 128,
        };
        let reserved_concurrency = match &props.reserved_concurrent_executions {
            Some(e) => Some(r.number(&what("ReservedConcurrentExecutions"), e)?),
            None => None,
        };
        let mut environment = BTreeMap::new();
        for env in [&g.environment, &props.environment].into_iter().flatten() {
            for (k, v) in &env.variables {
                environment.insert(k.clone(), r.resolve(&what(&format!("Environment.{k}")), v)?);
            }
        }
        let log_group = match props.logging_config.as_ref().and_then(|l| l.log_group.as_ref()) {
            Some(e) => r.resolve(&what("LoggingConfig.LogGroup"), e)?,
            None => format!("/aws/lambda/{}", build.build_properties.binary),
        };
        let mut def = FunctionDef {
            logical_id: id.into(),
            binary: build.build_properties.binary,
            timeout,
            memory_mb,
            reserved_concurrency,
            environment,
            log_group,
            routes: Vec::new(),
            sqs: Vec::new(),
            schedules: Vec::new(),
            statements: Vec::new(),
        };
        for (name, ev) in &props.events {
            let w = what(&format!("Events.{name}"));
            match ev {
                EventDoc::HttpApi(h) => def.routes.push(RouteDef {
                    name: name.clone(),
                    method: h.method.to_uppercase(),
                    path: h.path.clone(),
                }),
                EventDoc::Sqs(s) => def.sqs.push(SqsSourceDef {
                    name: name.clone(),
                    queue_arn: r.resolve(&w, &s.queue)?,
                    batch_size: match &s.batch_size {
                        Some(e) => r.number(&w, e)?,
                        None => 10,
                    },
                    maximum_concurrency: match s.scaling_config.as_ref().and_then(|c| c.maximum_concurrency.as_ref()) {
                        Some(e) => Some(r.number(&w, e)?),
                        None => None,
                    },
                    report_batch_item_failures: s
                        .function_response_types
                        .iter()
                        .any(|t| t == "ReportBatchItemFailures"),
                }),
                EventDoc::ScheduleV2(s) => {
                    let input = match &s.input {
                        Some(text) => serde_json::from_str(text)
                            .map_err(|e| TemplateError::Invalid(w.clone(), format!("Input is not JSON: {e}")))?,
                        None => serde_json::Value::Null,
                    };
                    def.schedules.push(ScheduleDef {
                        name: name.clone(),
                        expression: r.resolve(&w, &s.schedule_expression)?,
                        input,
                    })
                }
                EventDoc::Other => {}
            }
        }
        for (i, p) in props.policies.iter().enumerate() {
            let w = what(&format!("Policies[{i}]"));
            let statements = match p {
                Value::Mapping(m) => m.get("Statement").cloned().ok_or_else(|| {
                    TemplateError::Invalid(w.clone(), "only inline `Statement` policies are resolved locally".into())
                })?,
                _ => {
                    return Err(TemplateError::Invalid(
                        w,
                        "only inline `Statement` policies are resolved locally".into(),
                    ));
                }
            };
            let statements: Vec<StatementDoc> = Self::typed(&w, &statements)?;
            for s in statements {
                let resources = s.resource.0.iter().map(|e| r.resolve(&w, e)).collect::<Result<Vec<_>, _>>()?;
                def.statements.push(StatementDef {
                    effect: s.effect,
                    actions: s.action.into_vec(),
                    resources,
                    condition: s.condition,
                });
            }
        }
        Ok(def)
    }

    /// The default route throttling of the template's HTTP API (`AWS::Serverless::HttpApi`).
    pub fn http_api_throttle(&self, r: &Resolver) -> Result<Option<ThrottleDef>, TemplateError> {
        let Some((id, res)) = self.resources_of("AWS::Serverless::HttpApi").next() else {
            return Ok(None);
        };
        let api: HttpApiDoc = Self::typed(id, &res.properties)?;
        let Some(s) = api.default_route_settings else {
            return Ok(None);
        };
        match (s.throttling_burst_limit, s.throttling_rate_limit) {
            (Some(b), Some(rate)) => Ok(Some(ThrottleDef {
                burst: r.number(&format!("{id}.ThrottlingBurstLimit"), &b)?,
                rate_per_sec: r.number(&format!("{id}.ThrottlingRateLimit"), &rate)?,
            })),
            _ => Ok(None),
        }
    }

    /// A queue's visibility timeout and redrive count.
    pub fn queue(&self, id: &str, r: &Resolver) -> Result<QueueDef, TemplateError> {
        let res = self
            .doc
            .resources
            .get(id)
            .filter(|res| res.kind == "AWS::SQS::Queue")
            .ok_or_else(|| TemplateError::Invalid(id.into(), "no such queue".into()))?;
        let q: QueueDoc = Self::typed(id, &res.properties)?;
        Ok(QueueDef {
            visibility_timeout_secs: match &q.visibility_timeout {
                Some(e) => r.number(&format!("{id}.VisibilityTimeout"), e)?,
                None => 30,
            },
            max_receive_count: match &q.redrive_policy {
                Some(p) => Some(r.number(&format!("{id}.RedrivePolicy"), &p.max_receive_count)?),
                None => None,
            },
        })
    }

    /// The template's log groups (names unresolved: they may name functions).
    pub fn log_groups(&self, r: &Resolver) -> Result<Vec<LogGroupDef>, TemplateError> {
        self.resources_of("AWS::Logs::LogGroup")
            .map(|(id, res)| {
                let g: LogGroupDoc = Self::typed(id, &res.properties)?;
                let retention_days = match &g.retention_in_days {
                    Some(e) => Some(r.number(&format!("{id}.RetentionInDays"), e)?),
                    None => None,
                };
                Ok(LogGroupDef { logical_id: id.clone(), name: g.log_group_name, retention_days })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(t: &Template) -> Resolver {
        let mut r = t.resolver(&[("GhlLocationId", "loc1")], "local");
        for (id, name) in [("SyncQueue", "q.fifo"), ("DeadLetterQueue", "dlq.fifo")] {
            r.resources.insert(
                id.into(),
                ResourceValues {
                    reference: format!("http://sqs/{name}"),
                    attributes: [
                        ("Arn".to_string(), format!("arn:aws:sqs:us-east-1:123456789012:{name}")),
                        ("QueueName".to_string(), name.to_string()),
                    ]
                    .into(),
                },
            );
        }
        r.resources.insert(
            "StateTable".into(),
            ResourceValues {
                reference: "state".into(),
                attributes: [("Arn".to_string(), "arn:aws:dynamodb:us-east-1:123456789012:table/state".to_string())]
                    .into(),
            },
        );
        r.resources.insert(
            "SyncSecret".into(),
            ResourceValues {
                reference: "arn:aws:secretsmanager:us-east-1:123456789012:secret:sync-AbCdEf".into(),
                ..Default::default()
            },
        );
        for id in t.function_ids() {
            r.resources.insert(id.clone(), ResourceValues { reference: id.clone(), ..Default::default() });
        }
        for g in t.log_groups(&r.clone()).unwrap() {
            let name = r.resolve("log group", g.name.as_ref().unwrap()).unwrap();
            r.resources.insert(g.logical_id, ResourceValues { reference: name, ..Default::default() });
        }
        r
    }

    #[test]
    fn the_project_template_resolves_for_every_function() {
        let t = Template::load(&default_path()).unwrap();
        let r = resolver(&t);
        let fns = t.functions(&r).unwrap();
        let by = |bin: &str| fns.iter().find(|f| f.binary == bin).unwrap().clone();

        let worker = by("sv-worker");
        assert_eq!(worker.timeout, Duration::from_secs(60));
        assert_eq!(worker.sqs.len(), 1);
        assert_eq!(worker.sqs[0].queue_arn, "arn:aws:sqs:us-east-1:123456789012:q.fifo");
        assert_eq!(worker.sqs[0].batch_size, 10);
        assert_eq!(worker.sqs[0].maximum_concurrency, Some(2));
        assert!(worker.sqs[0].report_batch_item_failures);
        assert_eq!(worker.environment["SYNC_QUEUE_URL"], "http://sqs/q.fifo");
        assert_eq!(worker.environment["GHL_LOCATION_ID"], "loc1");
        assert_eq!(worker.environment["GHL_BURST_MAX"], "100");

        let intake = by("sv-intake");
        assert_eq!(intake.timeout, Duration::from_secs(10));
        assert!(intake.reserved_concurrency.is_some(), "the intake has a reserved concurrency");
        assert!(intake.routes.iter().any(|r| r.method == "POST" && r.path == "/webhooks/sproutvideo/{token}"));
        assert!(
            intake
                .statements
                .iter()
                .any(|s| s.actions == ["sqs:SendMessage"]
                    && s.resources == ["arn:aws:sqs:us-east-1:123456789012:q.fifo"])
        );

        let rec = by("sv-reconciler");
        assert_eq!(rec.schedules.len(), 1);
        assert_eq!(rec.schedules[0].input, serde_json::json!({}));
        assert_eq!(rec.memory_mb, 512);
        for f in &fns {
            assert!(f.log_group.starts_with("/aws/lambda/"), "{}: {}", f.binary, f.log_group);
        }
        let throttle = t.http_api_throttle(&r).unwrap().expect("the HTTP API throttles its default route");
        assert!(throttle.burst > 0 && throttle.rate_per_sec > 0.0);
        let q = t.queue("SyncQueue", &r).unwrap();
        assert_eq!(q.max_receive_count, Some(8));
        let groups = t.log_groups(&r).unwrap();
        assert_eq!(groups.len(), fns.len(), "one log group per function");
        assert!(groups.iter().all(|g| g.retention_days.is_some()));
    }

    #[test]
    fn intrinsics_resolve_or_name_what_is_missing() {
        let t = Template::parse("Resources: {}").unwrap();
        let mut r = t.resolver(&[("P", "v")], "stack");
        r.resources.insert(
            "Q".into(),
            ResourceValues { reference: "url".into(), attributes: [("Arn".to_string(), "arn:q".to_string())].into() },
        );
        let e: Expr = serde_norway::from_str("!Sub '/aws/lambda/${AWS::StackName}-${P}-${Q.Arn}'").unwrap();
        assert_eq!(r.resolve("x", &e).unwrap(), "/aws/lambda/stack-v-arn:q");
        let e: Expr = serde_norway::from_str("{ 'Fn::GetAtt': [Q, Arn] }").unwrap();
        assert_eq!(r.resolve("x", &e).unwrap(), "arn:q");
        let e: Expr = serde_norway::from_str("!GetAtt Missing.Arn").unwrap();
        assert!(r.resolve("Fn.Policies", &e).unwrap_err().to_string().contains("!GetAtt Missing.Arn"));
        let e: Expr = serde_norway::from_str("!Join ['', [a, b]]").unwrap();
        assert!(r.resolve("x", &e).unwrap_err().to_string().contains("Join"));
    }
}
