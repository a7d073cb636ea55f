// The GRIP backend Pushpin needs: it tells Pushpin to hold each client on its channel, as an
// SSE stream (GET /sse?channel=X) or as a long-poll (GET /poll?channel=X). Publishing goes to
// Pushpin's own publish endpoint, not here.
// usage: node grip-backend.js PORT
'use strict';
const http = require('node:http');

const port = Number(process.argv[2] || 8764);
http.createServer((request, response) => {
  const url = new URL(request.url, 'http://backend');
  const channel = url.searchParams.get('channel') || 'bench:0';
  if (url.pathname === '/sse') {
    response.writeHead(200, {
      'Content-Type': 'text/event-stream',
      'Grip-Hold': 'stream',
      'Grip-Channel': channel,
    });
    response.end(':\n\n');
  } else if (url.pathname === '/poll') {
    response.writeHead(200, {
      'Content-Type': 'application/json',
      'Grip-Hold': 'response',
      'Grip-Channel': channel,
      'Grip-Timeout': '25',
    });
    response.end('{"messages":[]}\n');
  } else {
    response.writeHead(404).end();
  }
}).listen(port, '127.0.0.1', () => console.log(`grip backend listening on ${port}`));
