//! Verify: the revision's commit (and tag) signatures against the trusted keys of
//! `spec.verify.secretRef`, before anything of it is rendered or applied. The Secret is read as
//! the GitRepository's own identity, and only when a new revision is to be applied: a steady
//! state reads nothing.

use kube::ResourceExt;

use super::Context;
use super::failure::Failure;
use super::fetch::{Checkout, read_secret};
use super::state::State;
use crate::api::GitRepository;
use crate::source::verify::TrustedKeys;

pub(super) async fn verify(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    checkout: &Checkout,
) -> Result<(), Failure> {
    let Some(spec) = &gr.spec.verify else {
        return Ok(());
    };
    let client = ctx.reader_for(gr, state).map_err(Failure::Identity)?;
    let name = &spec.secret_ref.name;
    let data = read_secret(&client, gr, name)
        .await
        .map_err(Failure::VerifySecret)?;
    let keys = TrustedKeys::from_secret_data(name, &data).map_err(Failure::Verification)?;
    keys.verify(spec.mode, &checkout.signatures)
        .map_err(Failure::Verification)?;
    tracing::debug!(
        namespace = gr.namespace(),
        name = gr.name_any(),
        "signatures verified"
    );
    Ok(())
}
