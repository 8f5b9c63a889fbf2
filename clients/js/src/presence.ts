/**
 * The size of this client's presence frame (y-websocket's awareness message: `varUint(1)`,
 * then the awareness update of one client as a `varUint8Array`), to refuse a state over the
 * server's message limit before it goes out: the server closes every socket such a frame is
 * written to with 1009, and a stock provider writes it again to every next one (review RK-5).
 */

import * as encoding from 'lib0/encoding'

const MESSAGE_AWARENESS = 1

export const presenceFrameBytes = (clientId: number, clock: number, state: unknown): number => {
  const update = encoding.createEncoder()
  encoding.writeVarUint(update, 1) // one client
  encoding.writeVarUint(update, clientId)
  encoding.writeVarUint(update, clock)
  encoding.writeVarString(update, JSON.stringify(state))
  const frame = encoding.createEncoder()
  encoding.writeVarUint(frame, MESSAGE_AWARENESS)
  encoding.writeVarUint8Array(frame, encoding.toUint8Array(update))
  return encoding.length(frame)
}
