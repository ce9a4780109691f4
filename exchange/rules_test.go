package exchange

import (
	"strings"
	"testing"
)

// TestRulesWithLargeExchangeRules: a rules-based (КД2) message carries
// the exchange rules (<ПравилаОбмена>, the conversion rules the receiver
// imports by) before <ДанныеПоОбмену>; for real configurations they run to
// several MB. The header reader skips them; they counted against
// MaxHeaderBytes (1 MiB), so with the default limits a valid КД2 message
// with 2 MiB of rules was refused as "too large" and dead-lettered.
func TestRulesWithLargeExchangeRules(t *testing.T) {
	var rules strings.Builder
	rules.WriteString("<ПравилаОбмена><ВерсияФормата>2.01</ВерсияФормата><ПравилаКонвертацииОбъектов><Группа>")
	for i := 0; rules.Len() < 2<<20; i++ {
		rules.WriteString(`<Правило><Код>Номенклатура</Код><Наименование>Номенклатура</Наименование>` +
			`<Источник>СправочникСсылка.Номенклатура</Источник><Приемник>СправочникСсылка.Номенклатура</Приемник>` +
			`<Свойства><Свойство Поиск="true"><Код>1</Код><Источник Имя="Код" Вид="Свойство" Тип="Строка"/>` +
			`<Приемник Имя="Код" Вид="Свойство" Тип="Строка"/></Свойство></Свойства></Правило>`)
	}
	rules.WriteString("</Группа></ПравилаКонвертацииОбъектов></ПравилаОбмена>")
	doc := rulesMsg(`ПланОбмена="П" ОтКого="А" Кому="Б" НомерИсходящегоСообщения="9" НомерВходящегоСообщения="8"`, rules.String())
	want := Header{DialectRules, "П", "А", "Б", 9, 8}
	h, err := CheckXML(strings.NewReader(doc), Limits{})
	if err != nil || h != want {
		t.Errorf("КД2 message with %d KiB of exchange rules: %+v, %v; want %+v", rules.Len()>>10, h, err, want)
	}
}
