//! `ferry health`: one GET of a service's readiness URL; a 2xx answer is
//! healthy, anything else (another status, no answer) is not.

use std::time::Duration;

use serde_json::json;

use crate::output::{Failure, Outcome};
use crate::HealthArgs;

/// Most of the body read and printed.
const BODY_LIMIT: u64 = 1024 * 1024;

/// GETs the URL and reports its status and body.
pub(crate) fn check(args: &HealthArgs) -> Result<Outcome, Failure> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            Failure::new(format!(
                "--timeout {}: not a positive number of seconds",
                args.timeout
            ))
        })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let answer = agent.get(&args.url).call().and_then(|mut r| {
        let status = r.status().as_u16();
        let body = r.body_mut().with_config().limit(BODY_LIMIT).read_to_vec()?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    });
    Ok(match answer {
        Ok((status, body)) => {
            let ok = (200..300).contains(&status);
            let verdict = if ok { "ready" } else { "not ready" };
            let mut human = format!("{verdict}: {} answered {status}\n", args.url);
            human.push_str(&body);
            Outcome {
                ok,
                json: json!({ "url": args.url, "ok": ok, "status": status, "body": body }),
                human,
            }
        }
        Err(e) => Outcome {
            ok: false,
            json: json!({ "url": args.url, "ok": false, "status": null, "error": e.to_string() }),
            human: format!("not ready: no answer from {}: {e}\n", args.url),
        },
    })
}
