//! The engine's inbox: `DATA_DIR/inbox` (an `assim-log`, the default) or, with
//! `--queue nats://…`, the JetStream stream every engine of a cluster shares
//! (`assim-inbox-jetstream`). Both implement [`assim_store::Inbox`]; this enum lets the driver
//! hold either.

use assim_inbox_jetstream::JetStreamInbox;
use assim_log::FileStorage;
use assim_store::{Inbox, InboxError, LogInbox, RecordId};

/// The engine's inbox (see the module doc).
#[derive(Debug)]
pub enum EngineInbox {
    Local(LogInbox<FileStorage>),
    JetStream(JetStreamInbox),
}

impl Inbox for EngineInbox {
    fn append(&mut self, record: &[u8], id: Option<RecordId>) -> Result<u64, InboxError> {
        match self {
            EngineInbox::Local(i) => i.append(record, id),
            EngineInbox::JetStream(i) => i.append(record, id),
        }
    }

    fn sync(&mut self) -> Result<(), InboxError> {
        match self {
            EngineInbox::Local(i) => i.sync(),
            EngineInbox::JetStream(i) => i.sync(),
        }
    }

    fn read_from(&mut self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, InboxError> {
        match self {
            EngineInbox::Local(i) => i.read_from(from),
            EngineInbox::JetStream(i) => i.read_from(from),
        }
    }

    fn remove_through(&mut self, position: u64) -> Result<(), InboxError> {
        match self {
            EngineInbox::Local(i) => i.remove_through(position),
            EngineInbox::JetStream(i) => i.remove_through(position),
        }
    }

    fn appended_elsewhere(&mut self, look: bool) -> Option<u64> {
        match self {
            EngineInbox::Local(i) => i.appended_elsewhere(look),
            EngineInbox::JetStream(i) => i.appended_elsewhere(look),
        }
    }
}
