//! The idempotency store on DynamoDB: one item per job, conditional writes.
//!
//! Item: `job` (key, S), `status` (`in_progress` | `completed`), `owner`,
//! `expires_at` (ms since the epoch, N), `claims` (N), and `ttl` (seconds
//! since the epoch, for DynamoDB's TTL sweeper, a day past `expires_at`).
//! Every decision reads `expires_at` in the write's condition; the sweeper
//! only saves space.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification,
};

use super::classify::classify;
use crate::error::BackendError;
use crate::idempotency::{
    from_millis, millis, system_clock, ClaimOutcome, Clock, IdempotencyRecord, IdempotencyStore,
    RecordStatus,
};

const IN_PROGRESS: &str = "in_progress";
const COMPLETED: &str = "completed";
/// The sweeper may delete an item this long after it stopped counting.
const SWEEP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Idempotency records in a DynamoDB table.
pub struct DynamoIdempotencyStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    clock: Clock,
}

impl std::fmt::Debug for DynamoIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoIdempotencyStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

impl DynamoIdempotencyStore {
    pub(crate) fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
            clock: system_clock(),
        }
    }

    /// The same store on another clock (tests step it past windows).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn resource(&self) -> String {
        format!("table {}", self.table)
    }

    fn now_ms(&self) -> u64 {
        millis((self.clock)())
    }

    fn ttl(expires_ms: u64) -> AttributeValue {
        n(expires_ms / 1000 + SWEEP_AFTER.as_secs())
    }

    pub(crate) async fn check(&self) -> Result<(), BackendError> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| classify(e, &self.resource()))?;
        Ok(())
    }

    pub(crate) async fn create_table(&self) -> Result<(), BackendError> {
        let res = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("job")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(invalid)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("job")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(invalid)?,
            )
            .send()
            .await;
        match res {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_in_use_exception()) => {}
            Err(e) => return Err(classify(e, &self.resource())),
        }
        // The sweeper is a space saving only; an endpoint without it is fine.
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build()
            .map_err(invalid)?;
        if let Err(e) = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(ttl)
            .send()
            .await
        {
            tracing::debug!(table = %self.table, error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e),
                "enabling TTL failed");
        }
        Ok(())
    }

    /// A conditional update of `key`; `Ok(false)` when the condition failed.
    async fn update(
        &self,
        key: &str,
        set: &str,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<bool, BackendError> {
        Ok(self
            .update_old(key, set, condition, values)
            .await?
            .is_some())
    }

    /// [`Self::update`], answering the item as it was before (empty: none).
    async fn update_old(
        &self,
        key: &str,
        set: &str,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<Option<std::collections::HashMap<String, AttributeValue>>, BackendError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("job", s(key))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .update_expression(set)
            .condition_expression(condition)
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#own", "owner")
            .expression_attribute_names("#exp", "expires_at");
        if set.contains("#claims") {
            req = req.expression_attribute_names("#claims", "claims");
        }
        if set.contains("#ttl") {
            req = req.expression_attribute_names("#ttl", "ttl");
        }
        if condition.contains("#job") {
            req = req.expression_attribute_names("#job", "job");
        }
        for (k, v) in values {
            req = req.expression_attribute_values(*k, v.clone());
        }
        match req.send().await {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify(e, &format!("{} item {key}", self.resource()))),
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> BackendError {
    BackendError::Invalid {
        message: e.to_string(),
    }
}

fn num(item: &std::collections::HashMap<String, AttributeValue>, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[async_trait]
impl IdempotencyStore for DynamoIdempotencyStore {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        let now = self.now_ms();
        let until = now + hold_for.as_millis() as u64;
        let claimed = self
            .update_old(
                key,
                "SET #st = :inprog, #own = :me, #exp = :until, #ttl = :ttl ADD #claims :one",
                "attribute_not_exists(#job) OR #exp <= :now",
                &[
                    (":inprog", s(IN_PROGRESS)),
                    (":me", s(owner)),
                    (":until", n(until)),
                    (":ttl", Self::ttl(until)),
                    (":one", n(1)),
                    (":now", n(now)),
                ],
            )
            .await?;
        if let Some(old) = claimed {
            // An earlier claim left unfinished: its holder may have done
            // some of the job's effects.
            let unfinished = old
                .get("status")
                .and_then(|v| v.as_s().ok())
                .is_some_and(|st| st == IN_PROGRESS);
            return Ok(if unfinished {
                ClaimOutcome::TakenOver
            } else {
                ClaimOutcome::Claimed
            });
        }
        Ok(match self.record(key).await? {
            Some(r) if r.status == RecordStatus::Completed && r.expires_at_ms > now => {
                ClaimOutcome::Completed
            }
            // In progress elsewhere (or it lapsed just now: look again soon).
            Some(r) => ClaimOutcome::HeldElsewhere {
                until: from_millis(r.expires_at_ms.max(now)),
            },
            None => ClaimOutcome::HeldElsewhere {
                until: from_millis(now),
            },
        })
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<bool, BackendError> {
        let until = self.now_ms() + hold_for.as_millis() as u64;
        self.update(
            key,
            "SET #exp = :until, #ttl = :ttl",
            "#st = :inprog AND #own = :me",
            &[
                (":inprog", s(IN_PROGRESS)),
                (":me", s(owner)),
                (":until", n(until)),
                (":ttl", Self::ttl(until)),
            ],
        )
        .await
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        keep_for: Duration,
    ) -> Result<bool, BackendError> {
        let until = self.now_ms() + keep_for.as_millis() as u64;
        self.update(
            key,
            "SET #st = :done, #exp = :until, #ttl = :ttl",
            "#st = :inprog AND #own = :me",
            &[
                (":inprog", s(IN_PROGRESS)),
                (":done", s(COMPLETED)),
                (":me", s(owner)),
                (":until", n(until)),
                (":ttl", Self::ttl(until)),
            ],
        )
        .await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), BackendError> {
        self.update(
            key,
            "SET #exp = :zero",
            "#st = :inprog AND #own = :me",
            &[
                (":inprog", s(IN_PROGRESS)),
                (":me", s(owner)),
                (":zero", n(0)),
            ],
        )
        .await?;
        Ok(())
    }

    async fn record(&self, key: &str) -> Result<Option<IdempotencyRecord>, BackendError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("job", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(e, &format!("{} item {key}", self.resource())))?;
        Ok(out.item().map(|item| IdempotencyRecord {
            status: match item.get("status").and_then(|v| v.as_s().ok()) {
                Some(v) if v == COMPLETED => RecordStatus::Completed,
                _ => RecordStatus::InProgress,
            },
            owner: item
                .get("owner")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default(),
            expires_at_ms: num(item, "expires_at"),
            claims: num(item, "claims"),
        }))
    }
}
