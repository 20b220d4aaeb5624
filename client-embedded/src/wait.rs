//! What each adapter call waits for: predicates over [`Event`]s, shared by
//! every IO adapter (`std`, `tokio`, `embassy-net`) so they behave alike.
//! A refusal by the gateway becomes the adapter's error through
//! `From<ReturnCode>`.

use mqttsn_codec::{QoS, ReturnCode};

use crate::Event;

pub(crate) fn connected<E: From<ReturnCode>>(e: &Event<'_>) -> Option<Result<(), E>> {
    match e {
        Event::Connected => Some(Ok(())),
        Event::ConnectRefused(rc) => Some(Err(E::from(*rc))),
        _ => None,
    }
}

pub(crate) fn registered<E: From<ReturnCode>>(
    msg_id: u16,
) -> impl FnMut(&Event<'_>) -> Option<Result<u16, E>> {
    move |e| match e {
        Event::Registered { msg_id: m, result } if *m == msg_id => Some(result.map_err(E::from)),
        _ => None,
    }
}

pub(crate) fn published<E: From<ReturnCode>>(
    msg_id: u16,
) -> impl FnMut(&Event<'_>) -> Option<Result<(), E>> {
    move |e| match e {
        Event::Published { msg_id: m, result } if *m == msg_id => Some(result.map_err(E::from)),
        _ => None,
    }
}

pub(crate) fn subscribed<E: From<ReturnCode>>(
    msg_id: u16,
) -> impl FnMut(&Event<'_>) -> Option<Result<(u16, QoS), E>> {
    move |e| match e {
        Event::Subscribed { msg_id: m, result } if *m == msg_id => Some(result.map_err(E::from)),
        _ => None,
    }
}

#[cfg_attr(not(feature = "embassy-net"), allow(dead_code))]
pub(crate) fn unsubscribed(msg_id: u16) -> impl FnMut(&Event<'_>) -> Option<()> {
    move |e| matches!(e, Event::Unsubscribed { msg_id: m } if *m == msg_id).then_some(())
}

#[cfg_attr(not(feature = "embassy-net"), allow(dead_code))]
pub(crate) fn any_message(e: &Event<'_>) -> Option<()> {
    matches!(e, Event::Message { .. }).then_some(())
}

pub(crate) fn disconnected(e: &Event<'_>) -> Option<()> {
    matches!(e, Event::Disconnected).then_some(())
}

pub(crate) fn pingresp(e: &Event<'_>) -> Option<()> {
    matches!(e, Event::PingResp).then_some(())
}
