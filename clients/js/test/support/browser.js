// Headless Chromium for the tests: Debian's (apt-get install -y chromium), driven by
// playwright-core, never a downloaded browser.
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.HERALD_TEST_CHROMIUM ?? '/usr/bin/chromium';

/** Why browser tests cannot run here, or false. */
export const skipWithoutChromium = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install -y chromium)`;

/** Chromium with the flags every test uses, and `extra` ones (fake media devices, say). */
export function launchChromium(extra = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      ...extra,
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Test pages are answered by page.route, so Chromium knows no address for them and takes
      // them for public ones: its Local Network Access checks would then block their WebSocket
      // to 127.0.0.1 (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS), which a page really
      // served from loopback is not.
      '--disable-features=LocalNetworkAccessChecks',
    ],
  });
}
