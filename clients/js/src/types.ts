/** The shapes of a session's shared document and of command replies (README: "The shared
 * document" and "The WebSocket protocol"). Field names are the document's own. */

export type Policy = 'queue' | 'coalesce' | 'interrupt' | 'reject'

export type EntryKind = 'prompt' | 'message' | 'reply' | 'tool'

export type PromptStatus = 'queued' | 'running' | 'done' | 'failed' | 'cancelled' | 'interrupted'
export type ReplyStatus = 'streaming' | 'done' | 'failed' | 'cancelled' | 'interrupted'
export type MessageStatus = 'posted'
export type ToolStatus = 'running' | 'done' | 'error' | 'refused' | 'cancelled' | 'interrupted'
export type EntryStatus = PromptStatus | ReplyStatus | MessageStatus | ToolStatus

/** Why a prompt ended unanswered (`session/reasons.py`). */
export const REASON_CODES = [
  'cancelled',
  'superseded',
  'timeout',
  'provider_error',
  'quota_exceeded',
  'forbidden',
  'member_removed',
  'token_revoked',
  'too_large',
  'unavailable',
  'storage_error',
  'server_shutdown',
  'server_restart',
  'failover',
  'internal_error'
] as const

export type ReasonCode = (typeof REASON_CODES)[number]

/** One entry of the transcript, as it is now (a reply's `content` grows as it streams). */
export interface Entry {
  readonly id: string
  readonly seq: number
  readonly kind: EntryKind
  /** A user id, or the model's name for a reply. */
  readonly author: string
  readonly role: 'user' | 'assistant' | 'tool'
  readonly status: EntryStatus
  readonly content: string
  readonly created_at: number
  readonly reason?: string
  readonly reason_code?: ReasonCode
  /** On a prompt that ran: its reply. */
  readonly reply_id?: string
  /** On a reply: the prompt it answers (the last, when it answers several). */
  readonly reply_to?: string
  /** On a reply: every prompt it answers. */
  readonly answers?: readonly string[]
  readonly started_at?: number
  /** On a tool step: the tool's name. */
  readonly tool?: string
  /** `private_thread`: a message a member shared back from their side-thread. */
  readonly source?: string
  /**
   * When a failed prompt (and its reply) may be sent again, in milliseconds since the epoch
   * (UTC): a token quota's next midnight (`reason_code` `quota_exceeded`); absent otherwise.
   */
  readonly retry_at?: number
}

/** A prompt waiting to run; `position` 1 runs next. */
export interface QueueItem {
  readonly id: string
  readonly seq: number
  readonly author: string
  readonly position: number
}

/** One client present in the session (one per socket, so a user may appear twice). */
export interface Peer {
  /** The awareness client id. */
  readonly clientId: number
  /** The user id the server stamped on this state; null for our own state. */
  readonly userId: string | null
  /** The member's display name the server stamped on this state (null: none, or ours). */
  readonly displayName: string | null
  /** The name the client put in its own state (`user.name`): not checked by the server. */
  readonly name: string | null
  readonly typing: boolean
  /** Whether this is this client. */
  readonly self: boolean
}

export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'closed'

export interface PromptAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: number
  readonly prompt_id: string
}
export interface MessageAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: number
  readonly message_id: string
}
export interface CancelAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: number
  readonly prompt_id: string
}
export interface PinAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: null
  readonly entry_id: string
}
export interface FactAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: null
  readonly key: string
}
export interface PolicyAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: null
  readonly policy: Policy
}
export type Ack =
  | PromptAck
  | MessageAck
  | CancelAck
  | PinAck
  | FactAck
  | PolicyAck
  | ThreadOpenAck
  | ThreadRunAck
  | ThreadAck

/** Side-threads (docs/threads.md): a member's private conversation with the model. */
export interface ThreadOpenAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: null
  readonly thread_id: string
  readonly anchor_seq: number
}
export interface ThreadRunAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: null
  readonly thread_id: string
  readonly turn_id: string
  readonly reply_id: string
}
export interface ThreadAck {
  readonly type: 'ack'
  readonly id: string
  readonly seq: null
  readonly thread_id: string
}
export interface ThreadTurn {
  readonly id: string
  readonly index: number
  readonly kind: 'prompt' | 'reply' | 'tool'
  readonly author: string
  readonly text: string
  readonly status: string
  readonly reason_code: string | null
  /**
   * When a failed prompt (and its reply) may be sent again, in milliseconds since the epoch
   * (UTC): a token quota's next midnight (`reason_code` `quota_exceeded`); null otherwise.
   */
  readonly retry_at: number | null
  readonly summarise: boolean
  readonly restricted: boolean
  readonly created_at: number
}
export interface SideThread {
  readonly id: string
  readonly owner: string
  readonly anchor_seq: number
  readonly title: string
  readonly status: 'open' | 'closed'
  readonly created_at: number
  readonly turns: readonly ThreadTurn[]
  readonly running: boolean
}
/** What this member's sockets are told of their side-threads. */
export type ThreadFrame =
  | { readonly type: 'thread', readonly thread: SideThread }
  /** ``offset``: the reply's characters before ``text`` (a socket that connects mid-reply is sent the text so far, from 0). */
  | { readonly type: 'thread_delta', readonly thread_id: string, readonly reply_id: string, readonly offset: number, readonly text: string }
  | { readonly type: 'thread_tool', readonly thread_id: string, readonly turn: ThreadTurn }
  | { readonly type: 'thread_deleted', readonly thread_id: string }

/** Text only this member may read (README: Permissions), sent to this socket alone. */
export interface RestrictedText {
  readonly type: 'restricted'
  readonly entry_id: string
  readonly kind: string
  readonly text: string
}

/** A member as they now stand, sent to every socket that speaks JSON when their role,
 * grants or display name change, they join or they leave (`role` null: no longer a member;
 * `display_name` '': none, show the user id). What `GET …/members` shows of them. */
export interface MemberFrame {
  readonly type: 'member'
  readonly user_id: string
  readonly role: string | null
  readonly display_name: string
  readonly capabilities: readonly string[]
}

/** What any command method takes last: `signal` gives the command up (`aborted`); `id`
 * sends it under that id (to resend one given up: the error's `commandId`), else a new one. */
export interface CommandOptions {
  signal?: AbortSignal
  id?: string
}
