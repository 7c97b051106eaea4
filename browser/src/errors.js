// Errors of the browser client: a WireError is a payload this device refuses to use or send.

export class WireError extends Error {
  constructor(message) {
    super(message);
    this.name = 'WireError';
  }
}

export class TooLargeError extends WireError {
  constructor(message) {
    super(message);
    this.name = 'TooLargeError';
  }
}
