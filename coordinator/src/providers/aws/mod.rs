//! The AWS provider: EC2 through its Query API, signed with SigV4.
//!
//! Per cluster it creates (or takes, when given by id) a VPC, a subnet and a security
//! group, plus an internet gateway with a default route when it made the VPC itself,
//! and one instance per node. Everything it creates carries the tag
//! `shoal:cluster = <name>-<uid>`; instances also carry `shoal:node`. Lookups go by
//! those tags, so a repeated call (after a crash, or a retry by the engine) reuses what
//! exists instead of making a second copy, and deletion works from tags alone, touching
//! only what Shoal made: resources given by id are never tagged, so never deleted.
//!
//! `RunInstances` carries a `ClientToken` derived from the cluster and node, so EC2
//! itself refuses to launch twice for the same node; before launching, the provider
//! also looks for a live instance already tagged for the node (emulators such as moto
//! do not honour client tokens).
//!
//! The parts: `network.rs` (VPC, subnet, internet gateway, route, security group:
//! made, found, deleted), `instances.rs` (launched, described, waited for,
//! terminated), `resources.rs` (the tags, and the record of what exists),
//! `params.rs` (the operator's settings), `calls.rs` (EC2 calls composed from the
//! [`ec2`] client). This file holds the [`Provider`] implementation, which runs them
//! in order and cleans up after a failed creation.
//!
//! See `docs/aws.md` for the operator's view.

pub mod credentials;
pub mod ec2;
pub mod preflight;

pub use self::preflight::preflight;

mod calls;
mod instances;
pub use instances::device_names;
mod network;
mod params;
mod resources;

use std::sync::OnceLock;
use std::time::Duration;

use futures_util::future::BoxFuture;
use shoal_protocol::backoff::Backoff;

pub use credentials::{AwsSettings, Credentials, Env};
pub use ec2::{AwsError, Params, QueryClient, EC2_API_VERSION};
pub use instances::client_token;
pub use params::{DEFAULT_INSTANCE_TYPE, DEFAULT_VPC_CIDR};
pub use resources::{TAG_CLUSTER, TAG_NODE};

use self::instances::NOT_TERMINATED;
use self::params::config;
use self::resources::Resources;
use crate::providers::retry::CLOUD_BACKOFF;
use crate::providers::{
    ClusterRef, NodeInfo, NodeRequest, Provider, ProviderError, ProviderParams,
};

/// EC2's limit on user-data, in bytes, before base64: "User data is limited to 16 KB,
/// in raw form, before it is base64-encoded" (Amazon EC2 User Guide, "Work with
/// instance user data").
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// How long the provider waits, and how it backs off, for each kind of wait.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Retries of single API calls (throttling, 5xx, connection errors).
    pub api: Backoff,
    /// Polling: instances getting addresses, instances terminating.
    pub wait: Backoff,
    /// Deleting network resources that are still in use (`DependencyViolation`: EC2
    /// releases a terminated instance's network interface some time after it is gone).
    pub dependency: Backoff,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            api: CLOUD_BACKOFF,
            wait: Backoff {
                initial: Duration::from_secs(2),
                cap: Duration::from_secs(15),
                deadline: Duration::from_secs(600),
            },
            dependency: Backoff {
                initial: Duration::from_secs(2),
                cap: Duration::from_secs(15),
                deadline: Duration::from_secs(300),
            },
        }
    }
}

/// The AWS provider. Credentials, region and endpoint are resolved at every call from
/// the cluster's [`ProviderParams`] and the environment (see [`credentials`]).
#[derive(Debug, Clone, Default)]
pub struct AwsProvider {
    env: Env,
    timing: Timing,
    http: OnceLock<reqwest::Client>,
}

impl AwsProvider {
    /// A provider reading the process environment and the user's `~/.aws` files.
    pub fn new() -> AwsProvider {
        AwsProvider::default()
    }

    /// A provider reading only the given environment (tests; servers that keep each
    /// operator's settings apart).
    pub fn with_env(env: Env) -> AwsProvider {
        AwsProvider {
            env,
            ..AwsProvider::default()
        }
    }

    /// Replaces the retry and wait schedules.
    pub fn with_timing(mut self, timing: Timing) -> AwsProvider {
        self.timing = timing;
        self
    }

    /// A signed EC2 client for the cluster's settings.
    pub fn client(&self, params: &ProviderParams) -> Result<QueryClient, ProviderError> {
        let settings = credentials::resolve(&self.env, params)?;
        tracing::debug!(
            region = %settings.region,
            endpoint = %settings.endpoint,
            access_key_id = settings.credentials.access_key_id(),
            credentials_from = settings.credentials.source(),
            "aws settings"
        );
        let http = match self.http.get() {
            Some(c) => c.clone(),
            None => {
                let c = ec2::http_client()?;
                // A concurrent call may have set it first; either client is fine.
                let _ = self.http.set(c.clone());
                c
            }
        };
        Ok(QueryClient::new(
            http,
            &settings.endpoint,
            &settings.region,
            "ec2",
            EC2_API_VERSION,
            settings.credentials,
        )?
        .with_backoff(self.timing.api))
    }

    /// Makes the network, launches the missing instances and waits for their
    /// addresses, recording in `made` what it created.
    async fn create(
        &self,
        client: &QueryClient,
        cluster: &ClusterRef,
        params: &ProviderParams,
        image: &str,
        nodes: &[NodeRequest],
        made: &mut Resources,
    ) -> Result<Vec<NodeInfo>, ProviderError> {
        let net = network::make(client, cluster, params, made).await?;
        instances::launch(
            client,
            cluster,
            params,
            image,
            &net,
            nodes,
            &mut made.instances,
        )
        .await?;
        let launched = made.instances.clone();
        instances::wait_for_addresses(client, &self.timing.wait, cluster, nodes, &launched).await
    }

    /// Deletes `res` in dependency order: instances (and waits until they are gone),
    /// then the network ([`network::delete`], which keeps going after a failure and
    /// returns every error). Stops after a failed termination, since nothing below can
    /// go while instances remain.
    async fn teardown(&self, client: &QueryClient, res: &Resources) -> Vec<ProviderError> {
        if !res.instances.is_empty() {
            if let Err(e) = instances::terminate(client, &self.timing.wait, &res.instances).await {
                return vec![e];
            }
        }
        network::delete(client, &self.timing.dependency, res).await
    }
}

/// Everything tagged for the cluster, instances not yet terminated included.
async fn tagged(client: &QueryClient, cluster: &ClusterRef) -> Result<Resources, ProviderError> {
    let instances = instances::list(client, cluster, Some(&NOT_TERMINATED))
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    Ok(Resources {
        instances,
        ..network::tagged(client, cluster).await?
    })
}

/// The first error, with how many more there were (all are logged).
fn first_error(what: &str, errors: Vec<ProviderError>) -> Result<(), ProviderError> {
    for e in &errors {
        tracing::warn!(error = %e, "{what}");
    }
    let more = errors.len().saturating_sub(1);
    match errors.into_iter().next() {
        None => Ok(()),
        Some(ProviderError::Api {
            provider,
            operation,
            code,
            message,
        }) if more > 0 => Err(ProviderError::Api {
            provider,
            operation,
            code,
            message: format!("{message} (and {more} more errors)"),
        }),
        Some(e) => Err(e),
    }
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn max_disks(&self) -> u32 {
        shoal_protocol::MAX_DISKS as u32
    }

    fn user_data_limit(&self) -> Option<usize> {
        Some(USER_DATA_LIMIT)
    }

    fn footprint(&self, cluster: &ClusterRef, params: &ProviderParams) -> Option<String> {
        let region = params
            .region
            .clone()
            .or_else(|| self.env.var("AWS_REGION"))
            .or_else(|| self.env.var("AWS_DEFAULT_REGION"));
        Some(match region {
            Some(r) => format!(
                "EC2 resources tagged {TAG_CLUSTER}={} in {r}",
                cluster.tag()
            ),
            None => format!("EC2 resources tagged {TAG_CLUSTER}={}", cluster.tag()),
        })
    }

    fn create_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
        nodes: &'a [NodeRequest],
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        Box::pin(async move {
            let image = params
                .image
                .as_deref()
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .ok_or_else(|| {
                    config("no machine image: give --image ami-… (an AMI of the region with Shoal's agent baked in)".into())
                })?;
            let limit = USER_DATA_LIMIT;
            if let Some(n) = nodes.iter().find(|n| n.user_data.len() > limit) {
                return Err(config(format!(
                    "user-data of {} is {} bytes, over EC2's limit of {limit} bytes",
                    n.node_id,
                    n.user_data.len(),
                )));
            }
            let client = self.client(params)?;
            let mut made = Resources::default();
            match self
                .create(&client, cluster, params, image, nodes, &mut made)
                .await
            {
                Ok(infos) => Ok(infos),
                Err(e) => {
                    if !made.is_empty() {
                        tracing::warn!(cluster = %cluster.tag(), error = %e, ?made, "creation failed: deleting what this call created");
                        let errors = self.teardown(&client, &made).await;
                        if let Err(cleanup) = first_error("cleanup after a failed creation", errors)
                        {
                            tracing::warn!(cluster = %cluster.tag(), error = %cleanup, "cleanup incomplete: delete the cluster to finish");
                        }
                    }
                    Err(e)
                }
            }
        })
    }

    fn describe_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        Box::pin(async move {
            let client = self.client(params)?;
            let all = instances::list(&client, cluster, Some(&NOT_TERMINATED)).await?;
            let mut infos: Vec<NodeInfo> = all
                .iter()
                .map(|i| i.info(i.node_id.as_deref().unwrap_or("")))
                .collect();
            infos.sort_by(|a, b| (&a.node_id, &a.instance_id).cmp(&(&b.node_id, &b.instance_id)));
            Ok(infos)
        })
    }

    fn delete_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
        nodes: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let client = self.client(params)?;
            // Their instances, found by tag as deletion finds everything; the root volume
            // and the primary network interface go with each (EC2 deletes both on
            // termination; an interface left behind is deleted after), the cluster's
            // network stays.
            let theirs: Vec<_> = instances::list(&client, cluster, Some(&NOT_TERMINATED))
                .await?
                .into_iter()
                .filter(|i| i.node_id.as_ref().is_some_and(|n| nodes.contains(n)))
                .collect();
            if theirs.is_empty() {
                tracing::info!(cluster = %cluster.tag(), nodes = ?nodes, "no instance left for these nodes");
                return Ok(());
            }
            let ids: Vec<String> = theirs.iter().map(|i| i.id.clone()).collect();
            let enis: Vec<String> = theirs
                .iter()
                .filter_map(|i| i.primary_eni.clone())
                .collect();
            tracing::info!(cluster = %cluster.tag(), nodes = ?nodes, instances = ?ids, "terminating the nodes' instances");
            instances::terminate(&client, &self.timing.wait, &ids).await?;
            instances::delete_leftover_interfaces(&client, &enis).await
        })
    }

    fn delete_cluster<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let client = self.client(params)?;
            let res = tagged(&client, cluster).await?;
            if res.is_empty() {
                tracing::info!(cluster = %cluster.tag(), "nothing tagged for this cluster: already deleted");
                return Ok(());
            }
            tracing::info!(cluster = %cluster.tag(), ?res, "deleting");
            first_error("deleting the cluster", self.teardown(&client, &res).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::instances::test_cluster;
    use super::*;

    #[tokio::test]
    async fn missing_image_names_the_flag() {
        let p = AwsProvider::with_env(Env::Fixed(BTreeMap::new()));
        let err = p
            .create_nodes(&test_cluster(), &ProviderParams::default(), &[])
            .await
            .expect_err("no image");
        assert!(matches!(err, ProviderError::Config { .. }));
        assert!(err.to_string().contains("--image"), "{err}");
    }

    #[tokio::test]
    async fn missing_credentials_fail_before_any_call() {
        let p = AwsProvider::with_env(Env::Fixed(
            [("HOME".to_string(), "/nonexistent-shoal-home".to_string())].into(),
        ));
        let params = ProviderParams {
            image: Some("ami-12345678".into()),
            region: Some("us-east-1".into()),
            ..Default::default()
        };
        let err = p
            .create_nodes(&test_cluster(), &params, &[])
            .await
            .expect_err("no creds");
        assert!(matches!(err, ProviderError::Config { .. }), "{err}");
        let err = p
            .delete_cluster(&test_cluster(), &params)
            .await
            .expect_err("no creds");
        assert!(err.to_string().contains("no AWS credentials"), "{err}");
    }
}
