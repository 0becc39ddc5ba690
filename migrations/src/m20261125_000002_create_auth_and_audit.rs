//! Sessions, machine API keys, login throttling, the audit log and the policy version that
//! tells every engine process when role assignments changed.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Sessions {
    Table,
    Id,
    TokenHash,
    UserId,
    PartnerScope,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum ApiKeys {
    Table,
    Id,
    NodeId,
    PartnerId,
    AgentId,
    MerchantId,
    StoreId,
    Name,
    Prefix,
    KeyHash,
    Role,
    CreatedBy,
    CreatedAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum LoginFailures {
    Table,
    Id,
    Account,
    Ip,
    At,
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditLog {
    Table,
    Id,
    At,
    ActorKind,
    ActorId,
    ActorLabel,
    ActorNodeId,
    PartnerId,
    AgentId,
    MerchantId,
    StoreId,
    NodeId,
    Action,
    TargetType,
    TargetId,
    RequestId,
    Outcome,
    Detail,
}

#[derive(DeriveIden, Clone, Copy)]
enum PolicyVersion {
    Table,
    Id,
    Version,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden, Clone, Copy)]
enum Nodes {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .if_not_exists()
                    .col(string_len(Sessions::Id, 36).primary_key())
                    .col(string_len_uniq(Sessions::TokenHash, 64))
                    .col(string_len(Sessions::UserId, 36))
                    .col(string_len_null(Sessions::PartnerScope, 36))
                    .col(timestamp_with_time_zone(Sessions::CreatedAt))
                    .col(timestamp_with_time_zone(Sessions::ExpiresAt))
                    .col(timestamp_with_time_zone_null(Sessions::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_sessions_user")
                            .from(Sessions::Table, Sessions::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "idx_sessions_user",
            Sessions::Table,
            &[Sessions::UserId],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .if_not_exists()
                    .col(string_len(ApiKeys::Id, 36).primary_key())
                    .col(string_len(ApiKeys::NodeId, 36))
                    .col(string_len_null(ApiKeys::PartnerId, 36))
                    .col(string_len_null(ApiKeys::AgentId, 36))
                    .col(string_len_null(ApiKeys::MerchantId, 36))
                    .col(string_len_null(ApiKeys::StoreId, 36))
                    .col(string_len(ApiKeys::Name, 100))
                    .col(string_len_uniq(ApiKeys::Prefix, 32))
                    .col(string_len(ApiKeys::KeyHash, 64))
                    .col(string_len(ApiKeys::Role, 32))
                    .col(string_len_null(ApiKeys::CreatedBy, 36))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::LastUsedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_api_keys_node")
                            .from(ApiKeys::Table, ApiKeys::NodeId)
                            .to(Nodes::Table, Nodes::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "idx_api_keys_node",
            ApiKeys::Table,
            &[ApiKeys::NodeId],
        )
        .await?;
        index(
            manager,
            "idx_api_keys_partner",
            ApiKeys::Table,
            &[ApiKeys::PartnerId],
        )
        .await?;
        index(
            manager,
            "idx_api_keys_agent",
            ApiKeys::Table,
            &[ApiKeys::AgentId],
        )
        .await?;
        index(
            manager,
            "idx_api_keys_merchant",
            ApiKeys::Table,
            &[ApiKeys::MerchantId],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(LoginFailures::Table)
                    .if_not_exists()
                    .col(big_pk_auto(LoginFailures::Id))
                    .col(string_len(LoginFailures::Account, 254))
                    .col(string_len(LoginFailures::Ip, 64))
                    .col(timestamp_with_time_zone(LoginFailures::At))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "idx_login_failures_account",
            LoginFailures::Table,
            &[LoginFailures::Account, LoginFailures::At],
        )
        .await?;
        index(
            manager,
            "idx_login_failures_ip",
            LoginFailures::Table,
            &[LoginFailures::Ip, LoginFailures::At],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .if_not_exists()
                    .col(string_len(AuditLog::Id, 36).primary_key())
                    .col(timestamp_with_time_zone(AuditLog::At))
                    .col(string_len(AuditLog::ActorKind, 16))
                    .col(string_len_null(AuditLog::ActorId, 36))
                    .col(string_len(AuditLog::ActorLabel, 254))
                    .col(string_len_null(AuditLog::ActorNodeId, 36))
                    .col(string_len_null(AuditLog::PartnerId, 36))
                    .col(string_len_null(AuditLog::AgentId, 36))
                    .col(string_len_null(AuditLog::MerchantId, 36))
                    .col(string_len_null(AuditLog::StoreId, 36))
                    .col(string_len_null(AuditLog::NodeId, 36))
                    .col(string_len(AuditLog::Action, 64))
                    .col(string_len(AuditLog::TargetType, 32))
                    .col(string_len_null(AuditLog::TargetId, 64))
                    .col(string_len_null(AuditLog::RequestId, 128))
                    .col(string_len(AuditLog::Outcome, 16))
                    .col(text_null(AuditLog::Detail))
                    .to_owned(),
            )
            .await?;
        index(manager, "idx_audit_at", AuditLog::Table, &[AuditLog::At]).await?;
        index(
            manager,
            "idx_audit_partner",
            AuditLog::Table,
            &[AuditLog::PartnerId, AuditLog::At],
        )
        .await?;
        index(
            manager,
            "idx_audit_agent",
            AuditLog::Table,
            &[AuditLog::AgentId, AuditLog::At],
        )
        .await?;
        index(
            manager,
            "idx_audit_merchant",
            AuditLog::Table,
            &[AuditLog::MerchantId, AuditLog::At],
        )
        .await?;
        index(
            manager,
            "idx_audit_store",
            AuditLog::Table,
            &[AuditLog::StoreId, AuditLog::At],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(PolicyVersion::Table)
                    .if_not_exists()
                    .col(integer(PolicyVersion::Id).primary_key())
                    .col(big_integer(PolicyVersion::Version))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(PolicyVersion::Table)
                    .columns([PolicyVersion::Id, PolicyVersion::Version])
                    .values_panic([1.into(), 1i64.into()])
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            PolicyVersion::Table.into_iden(),
            AuditLog::Table.into_iden(),
            LoginFailures::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            Sessions::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

async fn index<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: &[T],
) -> Result<(), DbErr> {
    let mut statement = Index::create();
    statement.if_not_exists().name(name).table(table);
    for column in columns {
        statement.col(*column);
    }
    manager.create_index(statement.to_owned()).await
}
