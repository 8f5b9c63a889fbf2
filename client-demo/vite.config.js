import { defineConfig } from 'vite'

// Served by `parley serve` at /demo (client-demo/dist is mounted there).
export default defineConfig({
  base: '/demo/',
  build: {
    outDir: 'dist',
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
