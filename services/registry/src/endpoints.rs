//! register, heartbeat, deregister, lookup.<name>, list.

use crate::Registry;
use crate::store::{healthy, info, now_ms};
use protocol::registry::{
    InstanceRef, ListReply, LookupReply, OkReply, RegisterReply, RegisterRequest, Registration,
    TOKEN_MAX_LEN, key, valid_token,
};
use protocol::{ErrorCode, ServiceError};
use runtime::micro::NoInput;
use std::sync::Arc;

const MAX_TTL_S: u64 = 3600;

fn check_token(what: &str, value: &str) -> Result<(), ServiceError> {
    if valid_token(value) {
        Ok(())
    } else {
        Err(ServiceError::invalid_request(format!(
            "{what} {value:?} must be 1 to {TOKEN_MAX_LEN} characters of A-Z a-z 0-9 _ -"
        )))
    }
}

fn unavailable(err: anyhow::Error) -> ServiceError {
    ServiceError::new(
        ErrorCode::Unavailable,
        format!("registry store unavailable: {err:#}"),
    )
}

pub(crate) async fn register(
    state: Arc<Registry>,
    req: RegisterRequest,
) -> Result<RegisterReply, ServiceError> {
    let (store, settings) = (&state.store, &state.settings);
    check_token("name", &req.name)?;
    check_token("instance_id", &req.instance_id)?;
    let ttl_s = req.ttl_s.unwrap_or(settings.default_ttl_s);
    if !(1..=MAX_TTL_S).contains(&ttl_s) {
        return Err(ServiceError::invalid_request(format!(
            "ttl_s must be 1 to {MAX_TTL_S}, not {ttl_s}"
        )));
    }
    let registration = Registration {
        name: req.name.clone(),
        instance_id: req.instance_id.clone(),
        version: req.version,
        endpoints: req.endpoints,
        metadata: req.metadata,
        ttl_s,
        registered_at: runtime::time::now_rfc3339(),
        last_seen_ms: now_ms(),
    };
    store
        .put(&key(&req.name, &req.instance_id), &registration)
        .await
        .map_err(unavailable)?;
    tracing::info!(service = %req.name, instance = %req.instance_id, ttl_s, "registered");
    Ok(RegisterReply { ok: true, ttl_s })
}

pub(crate) async fn heartbeat(
    state: Arc<Registry>,
    req: InstanceRef,
) -> Result<OkReply, ServiceError> {
    check_token("name", &req.name)?;
    check_token("instance_id", &req.instance_id)?;
    let k = key(&req.name, &req.instance_id);
    let Some(mut registration) = state.store.get(&k).await.map_err(unavailable)? else {
        return Err(ServiceError::new(
            ErrorCode::NotFound,
            format!(
                "{} instance {} is not registered; register again",
                req.name, req.instance_id
            ),
        ));
    };
    registration.last_seen_ms = now_ms();
    state
        .store
        .put(&k, &registration)
        .await
        .map_err(unavailable)?;
    Ok(OkReply { ok: true })
}

pub(crate) async fn deregister(
    state: Arc<Registry>,
    req: InstanceRef,
) -> Result<OkReply, ServiceError> {
    check_token("name", &req.name)?;
    check_token("instance_id", &req.instance_id)?;
    state
        .store
        .delete(&key(&req.name, &req.instance_id))
        .await
        .map_err(unavailable)?;
    tracing::info!(service = %req.name, instance = %req.instance_id, "deregistered");
    Ok(OkReply { ok: true })
}

pub(crate) async fn lookup(
    state: Arc<Registry>,
    subject: String,
    _: NoInput,
) -> Result<LookupReply, ServiceError> {
    let name = subject.rsplit('.').next().unwrap_or_default();
    check_token("name", name)?;
    let now = now_ms();
    let instances = state.store.all(Some(name)).await.map_err(unavailable)?;
    Ok(LookupReply {
        name: name.to_owned(),
        instances: instances
            .iter()
            .filter(|(r, _)| r.name == name)
            .map(|(r, _)| info(r, now))
            .collect(),
    })
}

pub(crate) async fn list(state: Arc<Registry>, _: NoInput) -> Result<ListReply, ServiceError> {
    let now = now_ms();
    let mut reply = ListReply::default();
    for (r, _) in state.store.all(None).await.map_err(unavailable)? {
        let count = reply.services.entry(r.name.clone()).or_insert(0);
        if healthy(&r, now) {
            *count += 1;
        }
    }
    Ok(reply)
}
