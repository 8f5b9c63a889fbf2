import { defineConfig } from 'vite'

// Served by `parley serve` at /demo. The build goes into the server's package
// (server/http/demo_files, not tracked), so a wheel built after it carries the demo.
export default defineConfig({
  base: '/demo/',
  resolve: {
    // @parley/client is linked from ../clients/js, which has its own yjs (a dev dependency):
    // resolve these from the demo's node_modules, so the page has one copy of each, the
    // versions the demo pins (two copies of yjs warn and do not mix).
    dedupe: ['yjs', 'y-websocket', 'y-protocols', 'lib0']
  },
  build: {
    outDir: '../server/http/demo_files',
    emptyOutDir: true,
    target: 'es2022'
  },
  server: {
    // `npm run dev` against a Parley on the default port: proxy the socket.
    proxy: {
      '/ws': { target: 'ws://127.0.0.1:8765', ws: true }
    }
  }
})
