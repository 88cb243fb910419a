"""An SMTP server for tests (aiosmtpd): each message it accepts is written to DIR as
JSON (envelope, headers, text and HTML bodies, whether TLS and a login were used).

  smtp_sink.py DIR PORT [--tls CERT KEY] [--login USER:PASS] [--reject SUBSTR] [--tempfail N]

--tls requires STARTTLS; --login requires AUTH (after STARTTLS when --tls is given);
--reject answers 550 to recipients containing SUBSTR; --tempfail answers 451 to the
first N messages. Writes DIR/ready once listening.
"""
import argparse, asyncio, email, email.policy, json, os, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("port", type=int)
p.add_argument("--tls", nargs=2)
p.add_argument("--login")
p.add_argument("--reject")
p.add_argument("--tempfail", type=int, default=0)
a = p.parse_args()


class Sink:
    def __init__(self):
        self.n = 0
        self.tempfail = a.tempfail

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if a.reject and a.reject in address:
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.tempfail > 0:
            self.tempfail -= 1
            return "451 4.3.0 try again later"
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        self.n += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": {k.lower(): str(v) for k, v in msg.items()},
            "text": text.get_content() if text else None,
            "html": html.get_content() if html else None,
            "tls": session.ssl is not None,
            "login": session.auth_data.login.decode() if session.auth_data else None,
        }
        name = "%d-%06d" % (time.time_ns(), self.n)
        tmp = os.path.join(a.dir, name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(a.dir, name + ".json"))
        return "250 OK: queued"


def authenticator(server, session, envelope, mechanism, auth_data):
    user, password = a.login.split(":", 1)
    ok = auth_data.login == user.encode() and auth_data.password == password.encode()
    return AuthResult(success=ok, auth_data=auth_data)


kwargs = {}
if a.tls:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.tls[0], a.tls[1])
    kwargs.update(tls_context=ctx, require_starttls=True)
if a.login:
    kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=bool(a.tls))
controller = Controller(Sink(), hostname="127.0.0.1", port=a.port, ready_timeout=10, **kwargs)
controller.start()
open(os.path.join(a.dir, "ready"), "w").close()
try:
    while True:
        time.sleep(3600)
except KeyboardInterrupt:
    pass
controller.stop()
