//! Redaction presets: versioned column and text rules a tenant exports through. The built-in
//! `default` (version 1) can be used, never changed.

use crate::{App, Ctx, Error};
use domain::TenantId;
use domain::preset::{self, PresetCommand, Rules};
use uuid::Uuid;

fn builtin(action: &str) -> Error {
    Error::Conflict {
        slug: "preset-builtin",
        detail: format!("the built-in default preset cannot be {action}"),
    }
}

/// A preset id as a client sent it: a UUID, never the built-in `default`.
fn preset_id(raw: &str, action: &str) -> Result<Uuid, Error> {
    if raw == preset::DEFAULT_ID {
        return Err(builtin(action));
    }
    Uuid::parse_str(raw).map_err(|_| Error::NotFound("no such preset".into()))
}

/// A new preset, version 1. Its id and position.
pub async fn create(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    name: String,
    rules: Rules,
) -> Result<(Uuid, u64), Error> {
    if name.eq_ignore_ascii_case(preset::DEFAULT_ID) {
        // A valid name that the built-in preset holds: a conflict, not a malformed request.
        return Err(Error::Conflict {
            slug: "preset-builtin",
            detail: "\"default\" is the built-in preset's name".into(),
        });
    }
    let preset_id = ctx.new_id("preset");
    let done = app
        .presets
        .execute(
            tenant,
            &preset::stream_id(preset_id),
            &PresetCommand::Create {
                preset_id,
                name,
                rules,
            },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok((preset_id, app.settled(&done.appended).await))
}

/// A new version of a preset (and its name, when given).
pub async fn edit(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    raw: &str,
    name: Option<String>,
    rules: Rules,
) -> Result<(Uuid, u64), Error> {
    let preset_id = preset_id(raw, "changed")?;
    let done = app
        .presets
        .execute(
            tenant,
            &preset::stream_id(preset_id),
            &PresetCommand::Edit { name, rules },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok((preset_id, app.settled(&done.appended).await))
}

/// Delete a preset (its versions stay readable in the history).
pub async fn delete(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    raw: &str,
) -> Result<(Uuid, u64), Error> {
    let preset_id = preset_id(raw, "deleted")?;
    let done = app
        .presets
        .execute(
            tenant,
            &preset::stream_id(preset_id),
            &PresetCommand::Delete,
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok((preset_id, app.settled(&done.appended).await))
}
