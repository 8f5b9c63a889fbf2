// The y-websocket reference server (@y/websocket-server) as the benchmark runs it:
// its own setupWSConnection on a ws server, plus a server-side writer.
//
// POST /bench/write?room=R&tokens=N&rate=X appends N fixed-width tokens to the room's
// root Y.Text "text" (getYDoc, the package's public API), one transaction each, X per
// second (0: one per event-loop turn), and answers with when each was appended, in
// seconds of CLOCK_MONOTONIC (process.hrtime), the clock Python's time.monotonic() reads.
//
// POST /bench/room?room=R creates the room's document.
//
//   node bench/peers/yws_server.mjs PORT  (beside its node_modules)

import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection, getYDoc } from '@y/websocket-server/utils'

const port = Number.parseInt(process.argv[2], 10)
const TOKEN_WIDTH = 8
const now = () => Number(process.hrtime.bigint()) / 1e9
const tokenText = (i) => String(i).padStart(TOKEN_WIDTH - 1, '0') + ' '
const nextTurn = () => new Promise((resolve) => setImmediate(resolve))
const sleep = (s) => new Promise((resolve) => setTimeout(resolve, Math.max(s, 0) * 1000))

const write = async (room, tokens, rate) => {
  const text = getYDoc(room).getText('text')
  const started = now()
  const yields = []
  for (let i = 0; i < tokens; i++) {
    if (rate > 0) await sleep(started + i / rate - now())
    else await nextTurn()
    // The token is yielded now: inserting it sends it to every socket before returning.
    yields.push(now())
    text.insert(text.length, tokenText(i))
  }
  return { started, yields }
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false })
wss.on('connection', setupWSConnection)

const server = http.createServer((request, response) => {
  const url = new URL(request.url ?? '/', 'http://localhost')
  const reply = (body) => {
    response.writeHead(200, { 'Content-Type': 'application/json' })
    response.end(JSON.stringify(body))
  }
  if (url.pathname === '/bench/write') {
    const q = url.searchParams
    write(q.get('room'), Number(q.get('tokens')), Number(q.get('rate'))).then(reply, (err) => {
      response.writeHead(500)
      response.end(String(err))
    })
    return
  }
  if (url.pathname === '/bench/room') getYDoc(url.searchParams.get('room'))
  reply({ status: 'ok' })
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request))
})
server.listen(port, '127.0.0.1')
