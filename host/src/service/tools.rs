//! Tools through the API: list and describe (with `api:read`), and call, through the same path as `toka-host tool
//! call`: the bearer token must grant `tool:NAME`, the tool runs in a fresh sandbox with at most the grants the request
//! asks for (each covered by the token), and the call is recorded.

use super::Service;
use super::api::{CallTool, ToolCallView, ToolView};
use super::auth;
use super::error::ApiError;
use crate::tools::call::Caller;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use std::sync::Arc;
use std::time::Duration;

fn tool_view(t: crate::tools::registry::Installed) -> ToolView {
    ToolView {
        name: t.name,
        version: t.spec.version,
        description: t.spec.description,
        side_effect: t.spec.side_effect,
        grants: t.spec.grants,
        sha256: t.sha256,
        input_schema: t.spec.input_schema,
        output_schema: t.spec.output_schema,
    }
}

/// The installed tools.
#[utoipa::path(get, path = "/v1/tools", responses((status = 200, body = Vec<ToolView>)), security(("bearer" = [])))]
pub async fn list(State(service): State<Arc<Service>>, headers: HeaderMap) -> Result<Json<Vec<ToolView>>, ApiError> {
    auth::reader(&service.host, &headers)?;
    let tools = service.host.tools().registry.list().map_err(ApiError::internal)?;
    Ok(Json(tools.into_iter().map(tool_view).collect()))
}

/// One installed tool.
#[utoipa::path(get, path = "/v1/tools/{name}", params(("name" = String, Path)),
    responses((status = 200, body = ToolView), (status = 404, body = super::api::ErrorBody)), security(("bearer" = [])))]
pub async fn describe(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ToolView>, ApiError> {
    auth::reader(&service.host, &headers)?;
    crate::tools::check_name(&name).map_err(ApiError::bad_request)?;
    let tool = service.host.tools().registry.get(&name).map_err(ApiError::not_found)?;
    Ok(Json(tool_view(tool)))
}

/// Call a tool.
#[utoipa::path(post, path = "/v1/tools/{name}/call", params(("name" = String, Path)), request_body = CallTool,
    responses((status = 200, body = ToolCallView), (status = 403, body = super::api::ErrorBody)), security(("bearer" = [])))]
pub async fn call(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    super::error::ApiJson(request): super::error::ApiJson<CallTool>,
) -> Result<Json<ToolCallView>, ApiError> {
    let bearer = auth::bearer(&service.host, &headers).inspect_err(|_| service.metrics.token_refused())?;
    crate::tools::check_name(&name).map_err(ApiError::bad_request)?;
    let (grants, _) = super::runs::grant_request(&request.grants)?;
    let authorized = service.host.authorize_grants(&grants)?;
    let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(30_000));
    let limits = crate::run::Limits { timeout, ..crate::run::Limits::default() };
    let agent = bearer.agent().to_string();
    let mut token_request = crate::commands::run::token_request(&agent, &grants.net, &authorized, &limits, None);
    token_request.grants.push(crate::token::Grant { kind: "tool".into(), value: name.clone(), mode: String::new() });
    let authorization = service.host.authorize_token(Some(&bearer.text), &token_request, crate::token::LOCAL_TTL)?;
    let mut authorized = authorized;
    authorized.token_id = authorization.token_id.clone();
    let caller = Caller {
        agent,
        run_id: None,
        token_id: authorization.token_id,
        token: authorization.token,
        grants: authorized,
        rate: authorization.rate,
        depth: 0,
        deadline: crate::units::deadline_after(timeout),
        max_memory: limits.max_memory,
        component: None,
        plugin: None,
        budget: None,
        cancel: None,
        llm: None,
    };
    let fuel = request.fuel.unwrap_or(limits.fuel);
    let report = service.host.tools().call(&caller, &name, &request.input.to_string(), fuel).await;
    let outcome =
        serde_json::to_value(report.outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    service.metrics.tool_called(&outcome);
    Ok(Json(ToolCallView {
        call_id: report.call_id,
        tool: report.tool,
        outcome,
        output: report.result.as_ref().ok().and_then(|o| serde_json::from_str(o).ok()),
        error: report.result.as_ref().err().map(|f| f.message().to_string()),
        fuel_consumed: report.fuel_consumed,
        wall_time_ms: report.wall.as_secs_f64() * 1e3,
    }))
}
