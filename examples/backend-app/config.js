// Where the app's backend is: the API gateway and the namespace. (The tests write their own.)
export const API = 'http://127.0.0.1:8080';
export const NAMESPACE = 'acme';
export const VERSION = 'v1';
