// meetpoint-nymea-probe drives nymea-remoteproxy's own client library so
// that meetpoint's interop suite (scripts/interop.sh) can test the library
// on every transport, WebSocket included (nymea's tunnelclient CLI only
// speaks TCP/SSL), and check bytes exactly (its CLI prints them escaped).
//
//   meetpoint-nymea-probe --role server|client|legacy --url URL [--ws]
//       --uuid UUID [--server-uuid UUID] [--token T] [--echo] [--timeout MS]
//       [--send HEX | --send-size N --pattern text|binary --seed S]
//       [--expect N] [--send-delay MS]
//
// server: registers UUID (TunnelProxy); each client that connects is sent
//         the payload (if any) and, with --echo, gets back what it sends.
// client: connects to --server-uuid (TunnelProxy) and sends the payload
//         once the tunnel is up.
// legacy: authenticates with --token (the legacy API; only built against
//         a library that has it, 1.8.4) and sends the payload once the
//         tunnel is up.
// The payload goes in ONE write of the library (a TunnelProxySocket sends
// each write as one SLIP frame), --send-delay ms after the tunnel is up
// (so that it never shares a read with the relay's last JSON-RPC message,
// which nymea's libraries cannot take). --send-size makes N bytes from seed S:
// a 64-bit LCG (x = x*6364136223846793005 + 1442695040888963407), its top
// byte each step; text maps it to [A-Za-z0-9-_] (scripts/interop makes
// the same bytes to check them).
// Each prints one line per event on stdout and exits after --timeout
// (default 8000 ms): "READY", "CONNECTED <name>", "RECV <hex>" (without
// --expect), "GOT <n> <sha256 hex>" (with --expect, once n >= N bytes
// came), "ERROR <what>". Certificate errors are ignored (the suite's
// certificate is self-signed).

#include <QCoreApplication>
#include <QCryptographicHash>
#include <QCommandLineParser>
#include <QTimer>
#include <QUuid>
#include <QUrl>
#include <cstdio>
#include <functional>

#include "tunnelproxyremoteconnection.h"
#include "tunnelproxysocketserver.h"
#include "tunnelproxysocket.h"
#ifdef MEETPOINT_LEGACY
#include "remoteproxyconnection.h"
#endif

using namespace remoteproxyclient;

static void say(const QByteArray &line)
{
    fprintf(stdout, "%s\n", line.constData());
    fflush(stdout);
}

// payload is n bytes from seed (see the header).
static QByteArray payload(qint64 n, bool text, quint64 seed)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    QByteArray b(int(n), Qt::Uninitialized);
    quint64 x = seed;
    for (qint64 i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        const quint8 r = quint8(x >> 56);
        b[int(i)] = text ? alphabet[r & 63] : char(r);
    }
    return b;
}

// Receiver prints what arrives: hex per read, or with an expected size
// the count and SHA-256 of everything once it is reached.
struct Receiver {
    qint64 expect = 0;
    qint64 got = 0;
    bool told = false;
    QCryptographicHash hash{QCryptographicHash::Sha256};
    void take(const QByteArray &data) {
        if (expect <= 0) {
            say("RECV " + data.toHex());
            return;
        }
        got += data.size();
        hash.addData(data);
        if (!told && got >= expect) {
            told = true;
            say("GOT " + QByteArray::number(got) + " " + hash.result().toHex());
        }
    }
};

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);
    QCommandLineParser p;
    QCommandLineOption role("role", "server or client", "role");
    QCommandLineOption url("url", "relay URL", "url");
    QCommandLineOption overWS("ws", "use the library's WebSocket transport");
    QCommandLineOption uuid("uuid", "our uuid", "uuid");
    QCommandLineOption serverUuid("server-uuid", "the server to reach (client)", "uuid");
    QCommandLineOption send("send", "bytes to send, in hex", "hex");
    QCommandLineOption echo("echo", "server: echo what clients send");
    QCommandLineOption timeout("timeout", "exit after this many ms", "ms", "8000");
    QCommandLineOption sendSize("send-size", "bytes to send, made from --seed", "n");
    QCommandLineOption pattern("pattern", "text or binary", "pattern", "text");
    QCommandLineOption seed("seed", "seed of the payload", "seed", "1");
    QCommandLineOption expect("expect", "print GOT once this many bytes came", "n");
    QCommandLineOption token("token", "legacy: the token", "token");
    QCommandLineOption sendDelay("send-delay", "send this many ms after the tunnel is up", "ms", "0");
    p.addOptions({role, url, overWS, uuid, serverUuid, send, echo, timeout, sendSize, pattern, seed, expect, token, sendDelay});
    p.process(app);

    const QByteArray payload = p.isSet(sendSize)
        ? ::payload(p.value(sendSize).toLongLong(), p.value(pattern) == "text", p.value(seed).toULongLong())
        : QByteArray::fromHex(p.value(send).toLatin1());
    Receiver rx;
    rx.expect = p.value(expect).toLongLong();
    const int delay = p.value(sendDelay).toInt();
    // later runs f after the send delay (while its object lives).
    auto later = [delay](QObject *o, std::function<void()> f) { QTimer::singleShot(delay, o, f); };
    QTimer::singleShot(p.value(timeout).toInt(), &app, [](){ QCoreApplication::exit(0); });

    if (p.value(role) == "server") {
        auto *srv = new TunnelProxySocketServer(QUuid(p.value(uuid)), "probe-server",
            p.isSet(overWS) ? TunnelProxySocketServer::ConnectionTypeWebSocket : TunnelProxySocketServer::ConnectionTypeTcpSocket, &app);
        QObject::connect(srv, &TunnelProxySocketServer::sslErrors, srv, [srv](const QList<QSslError> &errs){ srv->ignoreSslErrors(errs); });
        QObject::connect(srv, &TunnelProxySocketServer::runningChanged, srv, [](bool running){
            say(running ? "READY" : "ERROR not running");
        });
        QObject::connect(srv, &TunnelProxySocketServer::clientConnected, srv, [&](TunnelProxySocket *s){
            say("CONNECTED " + s->clientName().toUtf8());
            QObject::connect(s, &TunnelProxySocket::dataReceived, s, [&p, &echo, &rx, s](const QByteArray &data){
                rx.take(data);
                if (p.isSet(echo))
                    s->writeData(data);
            });
            if (!payload.isEmpty())
                later(s, [s, payload](){ s->writeData(payload); });
        });
        srv->startServer(QUrl(p.value(url)));
    } else if (p.value(role) == "legacy") {
#ifdef MEETPOINT_LEGACY
        auto *c = new RemoteProxyConnection(QUuid(p.value(uuid)), "probe-legacy",
            p.isSet(overWS) ? RemoteProxyConnection::ConnectionTypeWebSocket : RemoteProxyConnection::ConnectionTypeTcpSocket, &app);
        QObject::connect(c, &RemoteProxyConnection::sslErrors, c, [c](const QList<QSslError> &errs){ c->ignoreSslErrors(errs); });
        const QString tok = p.value(token);
        QObject::connect(c, &RemoteProxyConnection::ready, c, [c, tok](){ c->authenticate(tok); });
        QObject::connect(c, &RemoteProxyConnection::remoteConnectionEstablished, c, [c, payload, later](){
            say("READY");
            if (!payload.isEmpty())
                later(c, [c, payload](){ c->sendData(payload); });
        });
        QObject::connect(c, &RemoteProxyConnection::dataReady, c, [&rx](const QByteArray &data){ rx.take(data); });
        QObject::connect(c, &RemoteProxyConnection::disconnected, c, [](){ say("ERROR disconnected"); });
        c->connectServer(QUrl(p.value(url)));
#else
        say("ERROR this library has no legacy API");
        return 2;
#endif
    } else {
        auto *c = new TunnelProxyRemoteConnection(QUuid(p.value(uuid)), "probe-client",
            p.isSet(overWS) ? TunnelProxyRemoteConnection::ConnectionTypeWebSocket : TunnelProxyRemoteConnection::ConnectionTypeTcpSocket, &app);
        QObject::connect(c, &TunnelProxyRemoteConnection::sslErrors, c, [c](const QList<QSslError> &errs){ c->ignoreSslErrors(errs); });
        QObject::connect(c, &TunnelProxyRemoteConnection::remoteConnectedChanged, c, [c, payload, later](bool up){
            say(up ? "READY" : "ERROR disconnected");
            if (up && !payload.isEmpty())
                later(c, [c, payload](){ c->sendData(payload); });
        });
        QObject::connect(c, &TunnelProxyRemoteConnection::dataReady, c, [&rx](const QByteArray &data){ rx.take(data); });
        c->connectServer(QUrl(p.value(url)), QUuid(p.value(serverUuid)));
    }
    return app.exec();
}
