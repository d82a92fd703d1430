//! Read models derived from the event log. Empty until the service issue builds the projections
//! runtime (subscriptions, checkpoints, rebuild, read-your-writes); nothing here pretends to work.
