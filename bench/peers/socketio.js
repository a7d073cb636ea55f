// A Socket.IO server: every text POSTed to /publish is emitted to every client as event "m".
// usage: node socketio.js PORT
'use strict';
const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 8762);
const server = http.createServer((request, response) => {
  if (request.method !== 'POST' || request.url !== '/publish') return;
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', () => {
    io.emit('m', Buffer.concat(chunks).toString('utf8'));
    response.writeHead(204).end();
  });
});
const io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, serveClient: false });
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1', () => console.log(`socketio listening on ${port}`));
