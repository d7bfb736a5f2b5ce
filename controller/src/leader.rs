//! Leader election with a coordination.k8s.io Lease, as client-go does it: the holder
//! renews the Lease every few seconds; another replica takes it only once it has not been
//! renewed for its whole duration. A leader that cannot renew in time exits, so two
//! replicas never act at once for longer than one lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta};

use crate::cluster::Error;
use crate::write::{CONTROLLER, creating};

/// How long a Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews it, and others look.
pub const RETRY: Duration = Duration::from_secs(5);

/// Whether `me` may take (or keep) `lease` at `now`.
pub fn may_take(lease: &Lease, me: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return true;
    }
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS).max(1));
    match &spec.renew_time {
        Some(renewed) => renewed.0 + Duration::from_secs(seconds as u64) < now,
        None => true,
    }
}

/// The Lease as `me` holds it at `now`, from the one read (or none).
pub fn taken(name: &str, current: Option<&Lease>, me: &str, now: Timestamp) -> Lease {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let old = lease.spec.clone().unwrap_or_default();
    let changed = old.holder_identity.as_deref() != Some(me);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: if changed {
            Some(MicroTime(now))
        } else {
            old.acquire_time.clone()
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            old.lease_transitions.unwrap_or(0) + i32::from(changed && current.is_some()),
        ),
        ..LeaseSpec::default()
    });
    lease.metadata.managed_fields = None;
    lease
}

/// One attempt to take or renew the Lease; `Ok(true)` when `me` holds it now.
pub async fn try_take(
    client: &Client,
    namespace: &str,
    name: &str,
    me: &str,
    now: Timestamp,
) -> Result<bool, Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let current = api.get_opt(name).await?;
    if let Some(lease) = &current
        && !may_take(lease, me, now)
    {
        return Ok(false);
    }
    let wanted = taken(name, current.as_ref(), me, now);
    let result = match &current {
        None => api.create(&creating(CONTROLLER), &wanted).await,
        // The resourceVersion read makes this a compare-and-swap: a replica that took the
        // Lease in between makes it fail with 409.
        Some(_) => api.replace(name, &creating(CONTROLLER), &wanted).await,
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Waits until `me` holds the Lease, then keeps renewing it in the background; if renewal
/// fails for a whole lease duration the process exits (another replica may lead by then).
pub async fn acquire(client: &Client, namespace: &str, name: &str, me: &str) -> Result<(), Error> {
    loop {
        match try_take(client, namespace, name, me, Timestamp::now()).await {
            Ok(true) => break,
            Ok(false) => tracing::info!("waiting for the leader Lease {namespace}/{name}"),
            Err(e) => tracing::warn!("leader Lease {namespace}/{name}: {e}"),
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::info!("leading: holds Lease {namespace}/{name}");
    let (client, namespace, name, me) = (
        client.clone(),
        namespace.to_string(),
        name.to_string(),
        me.to_string(),
    );
    tokio::spawn(async move {
        let mut last = std::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match try_take(&client, &namespace, &name, &me, Timestamp::now()).await {
                Ok(true) => last = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("lost the leader Lease {namespace}/{name}: exiting");
                    std::process::exit(1);
                }
                Err(e) => tracing::warn!("renewing the leader Lease: {e}"),
            }
            if last.elapsed() > Duration::from_secs(LEASE_SECONDS as u64) {
                tracing::error!("could not renew the leader Lease in time: exiting");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}
