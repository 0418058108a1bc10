//! `services.notification.email-send`: validate, make the mail durable in
//! JetStream, then answer. Works as a request and as a plain publish.

use crate::Notifier;
use async_nats::HeaderMap;
use lettre::message::Mailbox;
use protocol::email::{self, EmailAccepted, EmailJob, EmailKind, EmailRequest};
use protocol::{ErrorCode, ServiceError, names};
use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const PUBLISH_BUDGET: Duration = Duration::from_secs(5);

/// The checked parts of a request.
#[derive(Debug, PartialEq)]
pub(crate) struct Checked {
    pub(crate) to: Mailbox,
    pub(crate) send_at: Option<OffsetDateTime>,
}

/// Validates a request against `now`.
pub(crate) fn check(
    req: &EmailRequest,
    now: OffsetDateTime,
    max_days: u64,
) -> Result<Checked, ServiceError> {
    let to: Mailbox = req.to.trim().parse().map_err(|e| {
        ServiceError::new(
            ErrorCode::InvalidAddress,
            format!("{:?} is not an email address: {e}", req.to),
        )
    })?;
    if req.subject.chars().any(|c| c == '\r' || c == '\n') {
        return Err(ServiceError::invalid_request("subject must be one line"));
    }
    if let Some(key) = &req.idempotency_key
        && (key.is_empty() || key.len() > 256 || key.chars().any(char::is_control))
    {
        return Err(ServiceError::invalid_request(
            "idempotency_key must be 1 to 256 characters without control characters",
        ));
    }
    let send_at = match &req.send_at {
        None => None,
        Some(raw) => {
            let at = OffsetDateTime::parse(raw.trim(), &Rfc3339)
                .map_err(|e| {
                    ServiceError::invalid_request(format!(
                        "send_at {raw:?} is not an RFC 3339 time: {e}"
                    ))
                })?
                .to_offset(time::UtcOffset::UTC)
                .replace_nanosecond(0)
                .unwrap_or(now);
            let limit = now + time::Duration::days(i64::try_from(max_days).unwrap_or(366));
            if at > limit {
                return Err(ServiceError::invalid_request(format!(
                    "send_at {raw:?} is more than {max_days} days ahead"
                )));
            }
            // In the past (or now): send at once.
            (at > now).then_some(at)
        }
    };
    Ok(Checked { to, send_at })
}

/// The mail's id: random, or derived from the idempotency key so that a
/// repeated request gets the same id back.
pub(crate) fn email_id(idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => {
            let digest = Sha256::digest(key.as_bytes());
            let mut id = String::from("em-");
            for byte in &digest[..12] {
                let _ = write!(id, "{byte:02x}");
            }
            id
        }
        None => format!("em-{}", nuid::next()),
    }
}

pub(crate) async fn accept(
    ctx: Arc<Notifier>,
    req: EmailRequest,
) -> Result<EmailAccepted, ServiceError> {
    let now = OffsetDateTime::now_utc();
    let checked = check(&req, now, ctx.settings.max_schedule_days)?;
    let id = email_id(req.idempotency_key.as_deref());
    let scheduled_for = checked.send_at.map(runtime::time::format_rfc3339);
    let job = EmailJob {
        id: id.clone(),
        kind: EmailKind::Request,
        to: checked.to.to_string(),
        subject: req.subject,
        body: req.body,
        accepted_at: runtime::time::format_rfc3339(now),
        scheduled_for: scheduled_for.clone(),
        idempotency_key: req.idempotency_key.clone(),
        payment_id: None,
        // The request's trace, kept with the job: a scheduled mail (whose
        // headers the server does not carry over) still continues it.
        traceparent: runtime::trace::current().and_then(|c| c.traceparent),
    };
    let body = serde_json::to_vec(&job)
        .map_err(|e| ServiceError::internal(format!("encoding the mail: {e}")))?;
    let msg_id = if req.idempotency_key.is_some() {
        format!("idem.{id}")
    } else {
        id.clone()
    };
    let mut headers = HeaderMap::new();
    let subject = match &scheduled_for {
        Some(at) => {
            // nats-server message scheduling: the server publishes the body
            // to the target at that time. Durable: it is a stream message.
            headers.insert(names::headers::SCHEDULE, format!("@at {at}").as_str());
            headers.insert(names::headers::SCHEDULE_TARGET, email::subjects::OUTBOX);
            email::subjects::scheduled(&id)
        }
        None => email::subjects::OUTBOX.to_owned(),
    };
    let ack = runtime::js::publish_durable(
        &ctx.js,
        &subject,
        &msg_id,
        Some(&headers),
        body.into(),
        PUBLISH_BUDGET,
    )
    .await
    .map_err(|e| {
        ServiceError::new(
            ErrorCode::Unavailable,
            format!("mail not accepted, try again: {e:#}"),
        )
    })?;
    tracing::info!(%id, to = %job.to, scheduled_for = scheduled_for.as_deref().unwrap_or("now"), duplicate = ack.duplicate, "mail accepted");
    Ok(EmailAccepted {
        accepted: true,
        id,
        scheduled_for,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(to: &str) -> EmailRequest {
        EmailRequest {
            to: to.into(),
            subject: "Hi".into(),
            body: "Hello".into(),
            send_at: None,
            idempotency_key: None,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-11-23T12:00:00Z", &Rfc3339).unwrap()
    }

    #[test]
    fn addresses() {
        assert!(check(&req("a@b.example"), now(), 1).is_ok());
        assert!(check(&req("Ann <a@b.example>"), now(), 1).is_ok());
        for bad in ["", "a", "a@", "@b", "a b@c.example", "a@b@c"] {
            assert_eq!(
                check(&req(bad), now(), 1).unwrap_err().code,
                ErrorCode::InvalidAddress,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn send_at() {
        let mut r = req("a@b.example");
        r.send_at = Some("2026-11-23T12:00:30.5Z".into());
        let at = check(&r, now(), 1).unwrap().send_at.unwrap();
        assert_eq!(runtime::time::format_rfc3339(at), "2026-11-23T12:00:30Z");
        r.send_at = Some("2026-11-23T14:00:30+02:00".into());
        assert_eq!(
            check(&r, now(), 1).unwrap().send_at,
            Some(at),
            "offsets become UTC"
        );
        r.send_at = Some("2026-11-23T11:00:00Z".into());
        assert_eq!(
            check(&r, now(), 1).unwrap().send_at,
            None,
            "the past means now"
        );
        r.send_at = Some("2026-11-25T12:00:00Z".into());
        assert_eq!(
            check(&r, now(), 1).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        r.send_at = Some("tomorrow".into());
        assert_eq!(
            check(&r, now(), 1).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn ids_and_keys() {
        assert_eq!(email_id(Some("k1")), email_id(Some("k1")));
        assert_ne!(email_id(Some("k1")), email_id(Some("k2")));
        assert_ne!(email_id(None), email_id(None));
        assert!(email_id(Some("x")).starts_with("em-") && email_id(Some("x")).len() == 27);
        let mut r = req("a@b.example");
        r.idempotency_key = Some("bad\nkey".into());
        assert_eq!(
            check(&r, now(), 1).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        r.idempotency_key = None;
        r.subject = "two\r\nlines".into();
        assert_eq!(
            check(&r, now(), 1).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }
}
