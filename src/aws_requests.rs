//! Counts every request attempt the AWS SDK clients send, by operation
//! (`relay_aws_requests_total{operation}`), so the calls an idle shard or a heartbeat costs are
//! visible per pod without the AWS bill.
//!
//! One interceptor on every client (`AwsClients::from_env`). The label is the operation name the
//! SDK stores with each call (its `Metadata`), a fixed set per service, never anything from the
//! request, so the series stay bounded.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::{Intercept, dyn_dispatch_hint};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::metrics;

/// Counts each attempt (a retried call counts once per attempt: each is a request AWS bills and
/// throttles).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountRequests;

// The hint tells the SDK which hooks this overrides, so it skips the others on every call.
#[dyn_dispatch_hint]
impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(operation) = cfg.load::<Metadata>() {
            metrics::aws_request(operation.name());
        }
        Ok(())
    }
}
