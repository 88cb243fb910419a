// A parser of server-sent events (text/event-stream) over a fetch body, as the
// HTML standard describes it: works where EventSource cannot (it sends no headers).

/**
 * One event of a stream.
 * @typedef {object} ServerSentEvent
 * @property {string} event The event type (`message` unless an `event:` line named one).
 * @property {string} data The `data:` lines, joined by newlines.
 * @property {string} id The last event id seen (`id:`), "" when none.
 * @property {number} [retry] The reconnection time the event set (`retry:`), in ms.
 */

/**
 * The events of a `text/event-stream` body, in order, as they arrive. Lines may end in
 * `\n`, `\r\n` or `\r`, and may be split anywhere between chunks (even inside a UTF-8
 * character). An event not ended by a blank line when the stream ends is dropped, as
 * the standard says. Breaking out of the loop cancels the body.
 *
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<ServerSentEvent, void, undefined>}
 */
export async function* readEventStream(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8');
  let buf = '';
  /** @type {string[]} */
  let data = [];
  let event = '';
  let id = '';
  /** @type {number | undefined} */
  let retry;
  let done = false;
  try {
    while (!done) {
      const chunk = await reader.read();
      if (chunk.done) {
        done = true;
        buf += decoder.decode();
        // A last line without its end still counts as a line (then the stream ends
        // without the blank line that would dispatch it).
        if (buf !== '') buf += '\n';
      } else {
        buf += decoder.decode(chunk.value, { stream: true });
      }
      let start = 0;
      for (;;) {
        let end = start;
        while (end < buf.length && buf[end] !== '\n' && buf[end] !== '\r') end++;
        if (end >= buf.length) break;
        // A `\r` at the very end may be the first half of `\r\n`: wait for more.
        if (buf[end] === '\r' && end + 1 >= buf.length && !done) break;
        const line = buf.slice(start, end);
        start = buf[end] === '\r' && buf[end + 1] === '\n' ? end + 2 : end + 1;
        if (line === '') {
          if (data.length > 0) {
            /** @type {ServerSentEvent} */
            const ev = { event: event || 'message', data: data.join('\n'), id };
            if (retry !== undefined) ev.retry = retry;
            data = [];
            event = '';
            retry = undefined;
            yield ev;
          } else {
            event = '';
          }
          continue;
        }
        if (line[0] === ':') continue; // a comment (keep-alive)
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value[0] === ' ') value = value.slice(1);
        switch (field) {
          case 'data':
            data.push(value);
            break;
          case 'event':
            event = value;
            break;
          case 'id':
            if (!value.includes('\0')) id = value;
            break;
          case 'retry':
            if (/^\d+$/.test(value)) retry = Number(value);
            break;
          default:
            break; // unknown fields are ignored
        }
      }
      buf = buf.slice(start);
    }
  } finally {
    if (!done) {
      // The consumer stopped early (or the read failed): close the connection.
      reader.cancel().catch(() => {});
    }
    try {
      reader.releaseLock();
    } catch {
      // a pending read keeps the lock; cancel() above ends it
    }
  }
}
