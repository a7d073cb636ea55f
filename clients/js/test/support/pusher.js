// Test support: the Pusher ecosystem's own packages (pusher-js, laravel-echo, the `pusher`
// server SDK) and `ws`, resolved from this package's node_modules for the tests outside it.
export { default as PusherClient } from 'pusher-js';
export { default as PusherServer } from 'pusher';
export { default as WebSocket } from 'ws';
import * as echo from 'laravel-echo';
export const Echo = echo.default?.default ?? echo.default ?? echo.Echo;
