//! register, heartbeat, deregister, lookup.<name>, list.

use crate::RegistrySettings;
use crate::store::{Store, healthy, info, now_ms};
use protocol::registry::{
    InstanceRef, ListReply, LookupReply, OkReply, RegisterReply, RegisterRequest, Registration, key,
};
use protocol::{ErrorCode, ServiceError, subjects};
use runtime::micro::NoInput;
use runtime::{App, ServiceBuilder};
use std::sync::Arc;

const MAX_TTL_S: u64 = 3600;

pub(crate) fn service(app: &App, store: Store, settings: RegistrySettings) -> ServiceBuilder {
    let ctx = Arc::new((store, settings));
    let (c1, c2, c3, c4, c5) = (ctx.clone(), ctx.clone(), ctx.clone(), ctx.clone(), ctx);
    app.service(crate::VERSION, crate::DESCRIPTION)
        .endpoint(
            "register",
            subjects::REGISTRY_REGISTER,
            move |req: RegisterRequest| {
                let ctx = c1.clone();
                async move { register(&ctx.0, &ctx.1, req).await }
            },
        )
        .endpoint(
            "heartbeat",
            subjects::REGISTRY_HEARTBEAT,
            move |req: InstanceRef| {
                let ctx = c2.clone();
                async move { heartbeat(&ctx.0, req).await }
            },
        )
        .endpoint(
            "deregister",
            subjects::REGISTRY_DEREGISTER,
            move |req: InstanceRef| {
                let ctx = c3.clone();
                async move { deregister(&ctx.0, req).await }
            },
        )
        .endpoint_with_subject(
            "lookup",
            format!("{}.*", subjects::REGISTRY_LOOKUP_PREFIX),
            move |subject: String, _: NoInput| {
                let ctx = c4.clone();
                async move { lookup(&ctx.0, &subject).await }
            },
        )
        .endpoint("list", subjects::REGISTRY_LIST, move |_: NoInput| {
            let ctx = c5.clone();
            async move { list(&ctx.0).await }
        })
}

fn check_token(what: &str, value: &str) -> Result<(), ServiceError> {
    if (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(ServiceError::invalid_request(format!(
            "{what} {value:?} must be 1 to 128 characters of A-Z a-z 0-9 _ -"
        )))
    }
}

fn unavailable(err: anyhow::Error) -> ServiceError {
    ServiceError::new(
        ErrorCode::Unavailable,
        format!("registry store unavailable: {err:#}"),
    )
}

async fn register(
    store: &Store,
    settings: &RegistrySettings,
    req: RegisterRequest,
) -> Result<RegisterReply, ServiceError> {
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

async fn heartbeat(store: &Store, req: InstanceRef) -> Result<OkReply, ServiceError> {
    check_token("name", &req.name)?;
    check_token("instance_id", &req.instance_id)?;
    let k = key(&req.name, &req.instance_id);
    let Some(mut registration) = store.get(&k).await.map_err(unavailable)? else {
        return Err(ServiceError::new(
            ErrorCode::NotFound,
            format!(
                "{} instance {} is not registered; register again",
                req.name, req.instance_id
            ),
        ));
    };
    registration.last_seen_ms = now_ms();
    store.put(&k, &registration).await.map_err(unavailable)?;
    Ok(OkReply { ok: true })
}

async fn deregister(store: &Store, req: InstanceRef) -> Result<OkReply, ServiceError> {
    check_token("name", &req.name)?;
    check_token("instance_id", &req.instance_id)?;
    store
        .delete(&key(&req.name, &req.instance_id))
        .await
        .map_err(unavailable)?;
    tracing::info!(service = %req.name, instance = %req.instance_id, "deregistered");
    Ok(OkReply { ok: true })
}

async fn lookup(store: &Store, subject: &str) -> Result<LookupReply, ServiceError> {
    let name = subject.rsplit('.').next().unwrap_or_default();
    check_token("name", name)?;
    let now = now_ms();
    let instances = store.all(Some(name)).await.map_err(unavailable)?;
    Ok(LookupReply {
        name: name.to_owned(),
        instances: instances
            .iter()
            .filter(|(r, _)| r.name == name)
            .map(|(r, _)| info(r, now))
            .collect(),
    })
}

async fn list(store: &Store) -> Result<ListReply, ServiceError> {
    let now = now_ms();
    let mut reply = ListReply::default();
    for (r, _) in store.all(None).await.map_err(unavailable)? {
        let count = reply.services.entry(r.name.clone()).or_insert(0);
        if healthy(&r, now) {
            *count += 1;
        }
    }
    Ok(reply)
}
