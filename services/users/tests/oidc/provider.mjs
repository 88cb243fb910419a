// A real OpenID Connect provider for the app users' tests: the `oidc-provider` package
// (installed by scripts/browser-setup into NODE_MODULES) with its development login
// form, which signs anyone in with any password. Prints "ready <issuer>" when listening.
//
//   NODE_MODULES   where oidc-provider is installed (required)
//   PORT           where it listens on 127.0.0.1 (required)
//   REDIRECT_URL   the one redirect URI of its one client, `shop` (secret `shop-secret`)
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const { default: Provider } = await import(pathToFileURL(join(process.env.NODE_MODULES, "oidc-provider/lib/index.js")).href);
const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "shop",
      client_secret: "shop-secret",
      redirect_uris: [process.env.REDIRECT_URL],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  pkce: { required: () => true },
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"] },
  // Who signs in: the login typed into the form is the subject; the address is
  // <login>@idp.test, confirmed.
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email: `${sub}@idp.test`, email_verified: true, name: `User ${sub}` };
      },
    };
  },
  // Scopes and claims are granted without a second question beyond the consent form.
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ["a-test-cookie-key-of-the-provider"] },
});
// Plain HTTP on 127.0.0.1: the provider's cookies are not "secure" here.
provider.proxy = true;
provider.listen(port, "127.0.0.1", () => console.log(`ready ${issuer}`));
