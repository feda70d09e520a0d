// Type declarations for meetpoint.js.

/** The version of this client (the release it belongs to). */
export const VERSION: string;

/** Stable error codes of MeetpointError. */
export type MeetpointErrorCode =
  | "auth_failed"
  | "auth_error"
  | "no_partner"
  | "tunnel_exists"
  | "duplicate_uuid"
  | "server_not_found"
  | "tunnelproxy"
  | "partner_left"
  | "server_shutdown"
  | "protocol"
  | "timeout"
  | "network"
  | "closed";

/** An error of the relay or of the connection. */
export class MeetpointError extends Error {
  readonly name: "MeetpointError";
  readonly code: MeetpointErrorCode;
  /** The relay's AuthenticationError value (auth_failed, auth_error). */
  readonly authenticationError?: string;
  /** The relay's TunnelProxyError value (server_not_found, tunnelproxy). */
  readonly tunnelProxyError?: string;
  /** The WebSocket close code, when the error came from a close. */
  readonly closeCode?: number;
}

/** What a Tunnel's "close" event carries, and what Tunnel.closed resolves with. */
export interface CloseDetail {
  code: number;
  reason: string;
  wasClean: boolean;
  error: MeetpointError;
}

/** The other end of a tunnel. */
export interface Peer {
  name?: string;
  uuid: string;
}

/** Data a Tunnel can send. */
export type SendData = string | ArrayBuffer | ArrayBufferView | Blob;

/** An established tunnel: "message" events (data: string | ArrayBuffer), one "close" event. */
export class Tunnel extends EventTarget {
  readonly peer: Peer;
  readonly closed: Promise<CloseDetail>;
  readonly bufferedAmount: number;
  onmessage: ((ev: MessageEvent<string | ArrayBuffer>) => void) | null;
  send(data: SendData): void;
  drained(lowWater?: number, interval?: number): Promise<void>;
  close(code?: number, reason?: string): Promise<CloseDetail>;
  addEventListener(type: "message", listener: (ev: MessageEvent<string | ArrayBuffer>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "close", listener: (ev: CustomEvent<CloseDetail>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

interface CommonOptions {
  /** ws://HOST:PORT/ or wss://HOST:PORT/ of the relay. */
  url: string;
  /** This client's name, shown to the partner (default "meetpoint.js"). */
  name?: string;
  /** This client's uuid (default: a random one). */
  uuid?: string;
  /** Say RemoteProxy.Hello first (default true). */
  hello?: boolean;
  /** Give up after this many milliseconds (default: none). */
  timeout?: number;
  /** Called with the relay's Hello reply. */
  onHello?: (info: { apiVersion?: string; name?: string; server?: string; version?: string }) => void;
  /** A WebSocket constructor, for runtimes without a global one. */
  WebSocket?: { new (url: string): WebSocket };
}

/** Options of pair(). */
export interface PairOptions extends CommonOptions {
  token: string;
  nonce?: string;
  /** Called once the token is accepted and the relay waits for the partner. */
  onWaiting?: () => void;
  /** Put token, nonce, name and uuid in the WebSocket URL (authenticated by the upgrade) instead of JSON-RPC. */
  urlToken?: boolean;
}

/** Options of reach(). */
export interface ReachOptions extends CommonOptions {
  serverUuid: string;
}

/** Pairs with the other client presenting the same token (and nonce). */
export function pair(opts: PairOptions): Promise<Tunnel>;

/** Connects as a TunnelProxy client of a registered server. */
export function reach(opts: ReachOptions): Promise<Tunnel>;

/** An event pushed to a Subscription. */
export interface EventDetail {
  channel: string;
  data: unknown;
}

/** A connection subscribed to event channels: "event" events, one "close" event. */
export class Subscription extends EventTarget {
  readonly channels: string[];
  readonly closed: Promise<CloseDetail>;
  close(): Promise<CloseDetail>;
  addEventListener(type: "event", listener: (ev: CustomEvent<EventDetail>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "close", listener: (ev: CustomEvent<CloseDetail>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** Options of subscribe(). */
export interface SubscribeOptions extends Omit<CommonOptions, "name" | "uuid"> {
  token: string;
  channels: string[];
  /** Put the token and channels in the WebSocket URL instead of JSON-RPC. */
  urlToken?: boolean;
}

/** Subscribes to event channels (a relay serving --events). */
export function subscribe(opts: SubscribeOptions): Promise<Subscription>;

/** A message's payload as bytes (text as UTF-8). */
export function bytes(data: string | ArrayBuffer | ArrayBufferView): Uint8Array;
