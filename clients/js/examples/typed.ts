// Compiled (never run) by `npm run build`: the declarations, as an application in
// TypeScript sees them through the package's own name.
import { connect, ERROR_CODES, ParleyError } from '@parley/client'
import type { Entry, ErrorCode, ParleyErrorCode, PromptAck, QueueItem } from '@parley/client'

const session = connect({ url: 'ws://127.0.0.1:8765', sessionId: 's', token: 't' })

export const ask = async (text: string): Promise<string> => {
  try {
    const ack: PromptAck = await session.prompt(text)
    return ack.prompt_id
  } catch (error) {
    if (!(error instanceof ParleyError)) throw error
    const code: ParleyErrorCode = error.code
    switch (code) {
      case 'queue_full':
      case 'busy':
      case 'rate_limited':
        return 'later'
      case 'closed':
        return 'gone'
      default:
        return code
    }
  }
}

export const waiting = (): readonly QueueItem[] => session.queue
export const failed = (): readonly Entry[] =>
  session.transcript.filter((entry) => entry.reason_code !== undefined && entry.status === 'failed')
export const known: readonly ErrorCode[] = ERROR_CODES
session.on('presence', (peers) => peers.filter((peer) => peer.typing && !peer.self))
session.on('state', (state) => state === 'closed' && session.closeError?.code)
