// A plain WebSocket broadcast server on the npm `ws` package: every text POSTed to /publish goes
// to every connected client as one text frame, encoded once.
// usage: node ws-broadcast.js PORT
'use strict';
const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 8761);
const server = http.createServer((request, response) => {
  if (request.method !== 'POST' || request.url !== '/publish') {
    response.writeHead(404).end();
    return;
  }
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    for (const client of sockets.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(text);
    }
    response.writeHead(204).end();
  });
});
const sockets = new WebSocketServer({ server, perMessageDeflate: false });
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1', () => console.log(`ws-broadcast listening on ${port}`));
