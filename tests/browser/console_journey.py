"""The consoles in Chromium, as people use them: every tier signs in on its own host, adds the
tier below it and that tier's first account, and signs out; on the way the partner installs and
offers a plugin, the agent builds, publishes and assigns a package with it, and the merchant
sees what it holds, sets up its Alipay app with a key pair made on the server, edits its member
levels, designs the membership card with a logo and background, syncs it to the offline Alipay
sandbox and shows its claim link as a QR code; a sandbox consumer claims the card and appears in
the merchant's members and opens her own card page on a phone; the cashier at the bottom sees
its store and the member, and no form, and takes a QR payment the consumer pays. Every page is checked with axe-core (no serious or critical violation), the
sign-in is done with the keyboard alone, and each tier's main pages are photographed in Chinese
and English.

Run by tests/it/browser.rs against an engine it started; exits non-zero on the first failure.
"""

import argparse
import json
import os
import re
import struct
import sys
import tempfile
import urllib.request
import zlib

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect, sync_playwright

PASSWORD = "correct horse battery staple"
# The plugins the partner installs, in the order their archives are given.
PLUGINS = ("com.trellis.hello", "com.trellis.membership")
LANGS = ("zh-CN", "en")
APP_ID = "2021000000000088"


def png(path, width, height):
    """A real PNG of one colour, as a merchant's logo or background would be."""
    rows = b"".join(b"\x00" + b"\x0b\x7a\x45" * width for _ in range(height))

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header))
        f.write(chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def sandbox(base, path, body):
    """What Alipay's side does, played by the offline sandbox: JSON in, JSON out."""
    request = urllib.request.Request(
        f"{base}/sandbox{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", required=True)
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--root-email", required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument(
        "--plugin", action="append", required=True, help="a .tplug archive the partner installs"
    )
    args = parser.parse_args()
    console = f"http://127.0.0.1:{args.port}"
    partner_site = f"http://jade.test:{args.port}"
    axe = Axe()
    checked = []
    merchant_id = []
    images = tempfile.mkdtemp()
    logo = os.path.join(images, "logo.png")
    background = os.path.join(images, "background.png")
    png(logo, 600, 600)
    png(background, 1100, 700)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium,
            # Partner domains are names only this test knows: send them all to the engine.
            args=["--no-sandbox", "--host-resolver-rules=MAP *.test 127.0.0.1"],
        )

        def visitor():
            return browser.new_context(
                viewport={"width": 1200, "height": 800}, locale="zh-CN"
            ).new_page()

        def accessible(page, what):
            results = axe.run(page)
            bad = [
                v
                for v in results.response["violations"]
                if v["impact"] in ("serious", "critical")
            ]
            if bad:
                for v in bad:
                    nodes = [n["target"] for n in v["nodes"]][:5]
                    print(f"{what}: {v['id']} ({v['impact']}): {v['help']} at {nodes}")
                sys.exit(f"{what}: accessibility violations")
            checked.append(what)

        def photograph(page, name):
            """The page as it is, checked, in both languages; back in Chinese afterwards."""
            url = page.url
            for lang in LANGS:
                page.goto(f"{origin(url)}/console/lang?to={lang}")
                page.goto(url)
                accessible(page, f"{name} ({lang})")
                page.screenshot(path=os.path.join(args.shots, f"{name}-{lang}.png"), full_page=True)
            page.goto(f"{origin(url)}/console/lang?to=zh-CN")
            page.goto(url)

        def sign_in_by_keyboard(page, site, email):
            page.goto(f"{site}/console")
            expect(page).to_have_url(f"{site}/console/login")
            accessible(page, f"sign-in on {site}")
            # The first Tab reaches the skip link; the form is done with keys alone.
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.className") == "skip"
            page.focus("#email")
            page.keyboard.type(email)
            page.keyboard.press("Tab")
            page.keyboard.type(PASSWORD)
            page.keyboard.press("Enter")
            expect(page).to_have_url(f"{site}/console")

        def add_child(page, name, **fields):
            page.fill("#name", name)
            for field, value in fields.items():
                if field == "theme":
                    page.select_option("#theme", value)
                else:
                    page.fill(f"#{field}", value)
            page.click("form[action='/console/nodes'] button[type=submit]")
            expect(page.locator("table")).to_contain_text(name)

        def add_account(page, child, email):
            row = page.locator("tr", has_text=child)
            row.locator("a[href^='/console/accounts?node_id=']").click()
            expect(page.locator("h1")).to_contain_text(child)
            page.fill("#email", email)
            page.fill("#password", PASSWORD)
            page.click("form[action='/console/accounts'] button[type=submit]")
            expect(page.locator("table")).to_contain_text(email)

        def install_and_offer(page):
            page.goto(f"{partner_site}/console/plugins")
            for archive, plugin in zip(args.plugin, PLUGINS):
                page.set_input_files("#archive", archive)
                page.click("form[action='/console/plugins/upload'] button[type=submit]")
                expect(page.locator("table")).to_contain_text(plugin)
                page.click(f"form[action='/console/plugins/{plugin}/offer'] button")
                withdraw = page.locator(f"form[action='/console/plugins/{plugin}/withdraw']")
                expect(withdraw).to_have_count(1)
            photograph(page, "partner-plugins")

        def package_for(page, merchant):
            page.goto(f"{partner_site}/console/packages")
            page.fill("#name", "金卡套餐")
            for plugin in PLUGINS:
                page.check(f"input[name=plugins][value='{plugin}']")
            page.fill("#validity_days", "365")
            page.fill("#max_members", "1000")
            page.click("form[action='/console/packages'] button[type=submit]")
            page.click("form[action$='/publish'] button")
            expect(page.locator("h1")).to_have_text("金卡套餐")
            page.select_option("#merchant_id", label=merchant)
            photograph(page, "agent-package")
            page.click("form[action$='/assign'] button")
            expect(page.locator("table")).to_contain_text(merchant)
            photograph(page, "agent-assignments")

        def alipay_app(page):
            """The key pair made on the server, registered at the sandbox as the owner would
            in Alipay's console, and Alipay's key and the gateway entered back."""
            page.goto(f"{partner_site}/console/alipay")
            page.click("form[action='/console/alipay/keypair'] button")
            public = page.locator("#app_public_key")
            expect(public).to_have_value(re.compile("^MII"))
            app = sandbox(
                console,
                "/apps",
                {"app_id": APP_ID, "app_public_key": public.input_value(), "identity": "uid"},
            )
            page.fill("#app_id", APP_ID)
            page.fill("#alipay_public_key", app["alipay_public_key"])
            page.select_option("#gateway", "custom")
            page.fill("#gateway_url", app["gateway_url"])
            page.click("form[action='/console/alipay'] button[type=submit]")
            expect(page.locator("main")).to_contain_text("已就绪")
            photograph(page, "merchant-alipay")

        def levels(page):
            page.get_by_role("link", name="会员等级", exact=True).click()
            page.get_by_role("link", name="编辑会员等级").click()
            expect(page.locator("legend")).to_have_count(2)
            photograph(page, "merchant-levels-edit")
            page.fill("#in-name-0", "普通会员")
            page.fill("#in-threshold-0", "0")
            page.fill("#in-benefits-0", "消费积分")
            page.fill("#in-name-1", "金卡")
            page.fill("#in-threshold-1", "500")
            page.fill("#in-discount-1", "95")
            page.click("main form button[type=submit]")
            expect(page.locator("h1")).to_have_text("会员等级")
            expect(page.locator("table")).to_contain_text("金卡")
            photograph(page, "merchant-levels")

        def card(page):
            page.get_by_role("link", name="会员卡", exact=True).click()
            expect(page.locator("dl.fields")).to_contain_text("never")
            page.get_by_role("link", name="设计会员卡").click()
            photograph(page, "merchant-card-edit")
            page.fill("#in-show_name", "莲花会员卡")
            page.fill("#in-brand_name", "莲花茶馆")
            page.set_input_files("#in-logo_id", logo)
            page.set_input_files("#in-background_id", background)
            page.fill("#in-bg_color", "#0B7A45")
            for column in ("points", "level"):
                page.check(f"input[name=columns][value={column}]")
            page.check("input[name=form_required][value=mobile]")
            page.click("main form button[type=submit]")
            expect(page.locator("h1")).to_have_text("会员卡")
            expect(page.locator("dl.fields")).to_contain_text("莲花会员卡")
            page.get_by_role("link", name="同步会员卡到支付宝").click()
            page.click("main form button[type=submit]")
            expect(page.locator("dl.fields")).to_contain_text("synced")
            photograph(page, "merchant-card")

        def claim(page):
            """The claim link as a QR code; a sandbox consumer opens it and fills Alipay's
            form."""
            page.get_by_role("link", name="领卡链接", exact=True).click()
            page.get_by_role("link", name="申请新的领卡链接").click()
            page.select_option("#in-callback", "clean")
            page.click("main form button[type=submit]")
            expect(page.locator("figure.qr svg")).to_have_count(1)
            photograph(page, "merchant-claim")
            url = page.locator("#qr-url").input_value()
            opened = sandbox(console, "/consumers/alice/open-claim-link", {"url": url})
            assert opened["callback_status"] == 200, opened

        def sign_out(page):
            page.click("form[action='/console/logout'] button")
            expect(page).to_have_url(re.compile(r".*/console/login$"))

        # The platform adds a partner on its own domain and theme, and the partner's admin.
        page = visitor()
        sign_in_by_keyboard(page, console, args.root_email)
        add_child(page, "翡翠茶饮服务商", domain="jade.test", theme="jade")
        photograph(page, "platform-home")
        add_account(page, "翡翠茶饮服务商", "admin@jade.test")
        photograph(page, "platform-accounts")
        sign_out(page)

        # Down the tree, each on the partner's domain: partner → agent → merchant → store.
        tiers = [
            ("partner", "admin@jade.test", "华东代理", "agent@jade.test"),
            ("agent", "agent@jade.test", "莲花茶馆", "owner@jade.test"),
            ("merchant", "owner@jade.test", "前台门店", "cashier@jade.test"),
        ]
        for tier, email, child, account in tiers:
            page = visitor()
            sign_in_by_keyboard(page, partner_site, email)
            expect(page.locator(".brand")).to_have_text("翡翠支付")
            add_child(page, child)
            photograph(page, f"{tier}-home")
            add_account(page, child, account)
            if tier == "partner":
                install_and_offer(page)
            if tier == "agent":
                package_for(page, child)
            if tier == "merchant":
                page.goto(f"{partner_site}/console/assignments")
                expect(page.locator("table")).to_contain_text("金卡套餐 v1")
                photograph(page, "merchant-assignments")
                alipay_app(page)
                levels(page)
                card(page)
                claim(page)
                # Membership's own pages, drawn by the console from its data: the member
                # who claimed the card is in the list.
                page.get_by_role("link", name="会员", exact=True).click()
                expect(page.locator("h1")).to_have_text("会员")
                expect(page.locator("input[type=search]")).to_have_count(1)
                expect(page.locator("tbody tr")).to_have_count(1)
                # Her mobile, as Alipay's form gave it (the sandbox's consumers have 138…).
                expect(page.locator("tbody")).to_contain_text("138")
                photograph(page, "merchant-members")
                page.goto(f"{partner_site}/console/keys")
                page.fill("#name", "收银机")
                page.click("form[action='/console/keys'] button[type=submit]")
                expect(page.locator("#made-secret")).to_have_value(re.compile("."))
                page.goto(f"{partner_site}/console/alipay")
                merchant_id.append(page.locator("input[name=merchant_id]").first.input_value())
                page.goto(f"{partner_site}/console/audit")
                expect(page.locator("table")).to_contain_text("store.create")
                photograph(page, "merchant-audit")
            sign_out(page)

        # The cashier sees the store and may add nothing, neither nodes nor accounts; it sees
        # the member and cannot adjust her.
        page = visitor()
        sign_in_by_keyboard(page, partner_site, "cashier@jade.test")
        expect(page.locator("h1")).to_have_text("前台门店")
        expect(page.locator("form[action='/console/nodes']")).to_have_count(0)
        expect(page.locator("nav.menu a[href='/console/accounts']")).to_have_count(0)
        photograph(page, "store-home")
        page.get_by_role("link", name="会员", exact=True).click()
        page.locator("tbody tr a").first.click()
        expect(page.locator("h1")).to_have_text("会员详情")
        expect(page.locator("a[href*='/adjust?']")).to_have_count(0)
        photograph(page, "store-member")
        # A QR payment at the counter: the consumer pays at the sandbox, "ask Alipay" shows it.
        page.click("nav.menu a[href='/console/payments']")
        page.get_by_role("link", name="新建收款码").click()
        photograph(page, "store-payment-new")
        page.fill("#amount", "12.50")
        page.fill("#subject", "桂花乌龙")
        page.click("main form button[type=submit]")
        expect(page.locator("figure.qr svg")).to_have_count(1)
        photograph(page, "store-payment-qr")
        out_trade_no = page.locator("dd.mono").first.inner_text()
        sandbox(console, "/consumers/alice/pay", {"app_id": APP_ID, "out_trade_no": out_trade_no})
        # Alipay's notification moves the payment on; the page's script sees it and reloads.
        expect(page.locator("h1")).to_contain_text("已付款", timeout=30_000)
        page.click("nav.menu a[href='/console/payments']")
        expect(page.locator("tbody")).to_contain_text("¥12.50")
        photograph(page, "store-payments")
        sign_out(page)

        # The member on her phone opens her card's page from Alipay: the engine sends her
        # through the sandbox's authorisation first and shows her own card.
        phone = browser.new_context(
            viewport={"width": 390, "height": 844}, locale="zh-CN", is_mobile=True
        ).new_page()
        phone.goto(f"{console}/sandbox/consumers/alice/sign-in")
        home = f"{partner_site}/m/{merchant_id[0]}/com.trellis.membership/me"
        phone.goto(home)
        expect(phone).to_have_url(re.compile(re.escape(home)))
        expect(phone.locator("body")).to_contain_text("莲花会员卡")
        expect(phone.locator("body")).to_contain_text("积分")
        accessible(phone, "member page (phone)")
        phone.screenshot(path=os.path.join(args.shots, "member-home-zh-CN.png"), full_page=True)
        # In English where the phone asks for it.
        phone = browser.new_context(
            viewport={"width": 390, "height": 844}, locale="en-US", is_mobile=True
        ).new_page()
        phone.goto(f"{console}/sandbox/consumers/alice/sign-in")
        phone.goto(home)
        expect(phone.locator("body")).to_contain_text("Points")
        phone.screenshot(path=os.path.join(args.shots, "member-home-en.png"), full_page=True)
        browser.close()
    print(f"checked {len(checked)} pages: " + ", ".join(checked))


def origin(url):
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


if __name__ == "__main__":
    main()
